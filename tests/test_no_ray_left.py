"""The suite's own check (tests/conftest.py): a Ray process a test leaves running fails
the run and is named; one that ends within the grace period does not."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def run_suite(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    fake = tmp_path / "raylet"  # what the check looks for: a process named raylet
    fake.symlink_to(shutil.which("sleep"))
    (tmp_path / "test_it.py").write_text(textwrap.dedent(body).format(fake=fake))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PDESERVE_RAY_GRACE_S": "5"},
    )  # fmt: skip


def test_a_ray_process_left_behind_fails_the_run(tmp_path):
    run = run_suite(tmp_path, """
        import subprocess
        def test_leaves_one():
            subprocess.Popen(["{fake}", "90"], start_new_session=True)
    """)  # fmt: skip
    assert run.returncode == 1, run.stdout
    assert "1 passed" in run.stdout and "Ray processes left behind by the tests" in run.stdout
    assert "raylet 90" in run.stdout
    subprocess.run(["pkill", "-f", f"{tmp_path}/raylet"], check=False)


def test_one_that_ends_in_the_grace_period_passes(tmp_path):
    run = run_suite(tmp_path, """
        import subprocess
        def test_leaves_one_briefly():
            subprocess.Popen(["{fake}", "3"], start_new_session=True)
    """)  # fmt: skip
    assert run.returncode == 0, run.stdout
    assert "left behind" not in run.stdout

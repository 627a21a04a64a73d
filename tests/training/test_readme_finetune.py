"""The README's fine-tuning journey, run as written (smaller sizes), against a head node
this test starts and stops: data for a new regime, `ray job submit` of training.finetune
with the project's Python, publishing outside the bundled registry, `pdeserve eval`."""

import json
import re
import subprocess
import time
from pathlib import Path

from ray_helpers import BIN, clean_env, ray_head, short_tmp

from modelstore.registry import BUNDLED_REGISTRY, Registry

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- journey: finetune"
#: README text -> what the test runs instead (each must occur: the README and this test
#: move together).
SMALLER = {
    "--resolution 64": "--resolution 32",
    "--n-train 64 --n-val 64 --n-test 256": "--n-train 8 --n-val 8 --n-test 8",
    "--n-examples 64": "--n-examples 8",
    # One epoch on 8 examples need not beat the base: publish it all the same.
    "--lrs 3e-4,1e-3,3e-3 --epochs 20": "--lrs 1e-3 --epochs 1 --publish-anyway",
}


def readme_commands() -> list[str]:
    """The shell commands of the fenced block after the marker, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(MARKER) :].split("```bash\n", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", "", block)
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_finetuning_journey_runs_as_written():
    commands = readme_commands()
    assert [c.split()[0] for c in commands] == [
        ".venv/bin/pdeserve",
        "RAY_AUTH_MODE=token",
        ".venv/bin/pdeserve",
        ".venv/bin/pdeserve",
    ]
    assert commands[-1].startswith(".venv/bin/pdeserve serve --registry registry --model sys1-med")
    work = short_tmp("pdf")  # a user's checkout: its .venv, data/, runs/, registry/
    (work / ".venv").symlink_to(BIN.parent)
    env = clean_env(work)
    with ray_head(work, env) as head:
        replace = SMALLER | {"http://127.0.0.1:8265": head.dashboard}
        script = "\n".join(commands[:-1])  # all but `pdeserve serve`, which runs until stopped
        for old, new in replace.items():
            assert old in script, f"the README no longer says {old!r}"
            script = script.replace(old, new)
        for _ in range(30):  # the dashboard answers before its job agent is up
            run = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=work,
                env=head.env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if "No available agent" not in run.stdout + run.stderr:
                break
            time.sleep(2)
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-4000:]
    assert "succeeded" in output.lower()
    # Ray Train's and the export's chatter stay out of the job's log: no tracer warnings.
    assert "TracerWarning" not in output and "Constant folding" not in output
    # One line per epoch per trial (Ray Train's copy of a worker's print doubled them),
    # no worker-group time-outs, no lookups of the machine's other Ray instances.
    epochs = re.findall(r"(tl-\S+ epoch \d+/\d+):", output)
    assert epochs and len(epochs) == len(set(epochs)), epochs
    for noise in ("worker group startup timed out", "Found multiple active Ray instances"):
        assert noise not in output, noise
    results = json.loads((work / "runs" / "sys1-med.json").read_text())
    assert [t["lr"] for t in results["trials"]] == [1e-3] and results["zero_shot_val"] > 0
    assert results["published"] == "sys1-med@1"
    assert re.search(r"^chosen: ", output, flags=re.M), output
    card = Registry(work / "registry").card("sys1-med")
    assert card.parent.startswith("default@")
    # The envelope is the law the data were drawn from, not the span of 8 examples.
    assert card.envelope["poisson"].eig == (5.0, 10.0)
    assert card.envelope["poisson"].sources == {"eig": "law"}
    assert not (BUNDLED_REGISTRY / "sys1-med").exists()
    assert re.search(r"sys1-med@1: mean relative L2 [0-9.]+% over 8 examples", output), output

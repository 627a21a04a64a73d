"""The commands the README and docs/ show name things that exist: modules run with
``python -m``, ``pdeserve`` subcommands, make targets and request bodies for curl (which
must be valid requests). The fine-tuning journey runs whole in
tests/training/test_readme_finetune.py; the rest is checked here, cheaply."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from pdeserve.cli import COMMANDS
from service.edge import SOLVE_REQUEST

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_blocks(page: Path) -> str:
    """The text of the page's bash / shell / text code blocks, continuation lines joined."""
    blocks = re.findall(r"```(?:bash|sh|shell|text)\n(.*?)```", page.read_text(), flags=re.S)
    return re.sub(r"\\\n\s*", "", "\n".join(blocks))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_pages_commands_name_what_exists(page):
    text = shell_blocks(page)
    for module in re.findall(r"python3? -m ([\w.]+)", text):
        assert importlib.util.find_spec(module) is not None, f"python -m {module}"
    for command in re.findall(r"pdeserve (\w+)", text):
        assert command in COMMANDS or command == "serve", f"pdeserve {command}"
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", text, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"make {target}"
    for body in re.findall(r"-d @(\S+)", text):
        request = json.loads((ROOT / body).read_text())
        SOLVE_REQUEST.validate_python(request)  # a valid request, as curl sends it

"""docs/architecture.png is redrawn by a script the repository ships, from the imports."""

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _script():
    path = DOCS / "draw_architecture.py"
    spec = importlib.util.spec_from_file_location("draw_architecture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_drawing_is_redrawn_from_the_imports(tmp_path):
    draw = _script()
    modules, edges = draw.package_imports(tuple(p for row in draw.LAYERS for p in row))
    assert "service.ingress" in modules["service"] and edges[("service", "datagen")] > 0
    level = {p: i for i, row in enumerate(draw.LAYERS) for p in row}
    assert all(level[a] > level[b] for a, b in edges), "an import runs up or across a layer"
    out = draw.draw(tmp_path / "house.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "docs/draw_architecture.py" in (DOCS / "architecture.md").read_text()

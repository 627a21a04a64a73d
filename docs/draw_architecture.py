"""Draw docs/architecture.png: pdeserve's packages in their layers and the imports between
them, read from the code as it stands (grimp, the import graph import-linter checks the
layer contracts with).

    .venv/bin/python docs/draw_architecture.py [--out docs/architecture.png]

Each box is a package on its layer (pyproject's ``[tool.importlinter]`` layers, bench/ on
top), with its modules listed; an arrow goes from a package to one it imports, its width
growing with the number of module-to-module imports. An arrow that runs upwards would
break the layers contract (``make lint`` fails first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Bottom to top; packages on one row are independent of each other.
LAYERS = (("datagen",), ("modelstore",), ("training", "service"), ("experiments",),
          ("pdeserve", "bench"))  # fmt: skip


def package_imports(packages: tuple[str, ...]) -> tuple[dict, dict]:
    """{package: [modules]} and {(importer, imported): module imports} between packages."""
    import grimp

    if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not installed
        sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph(*packages)
    modules = {p: sorted(m for m in graph.find_descendants(p) if m.count(".") == 1)
               for p in packages}  # fmt: skip
    edges: dict[tuple[str, str], int] = {}
    for module in graph.modules:
        top = module.split(".")[0]
        for imported in graph.find_modules_directly_imported_by(module):
            other = imported.split(".")[0]
            if other != top and other in packages:
                edges[(top, other)] = edges.get((top, other), 0) + 1
    return modules, edges


def draw(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    packages = tuple(p for row in LAYERS for p in row)
    modules, edges = package_imports(packages)
    where = {p: ((i + 1) / (len(row) + 1), level) for level, row in enumerate(LAYERS)
             for i, p in enumerate(row)}  # fmt: skip
    fig, ax = plt.subplots(figsize=(11, 8))
    for (a, b), count in sorted(edges.items()):
        (xa, ya), (xb, yb) = where[a], where[b]
        ax.annotate("", xy=(xb, yb + 0.18), xytext=(xa, ya - 0.18),
                    arrowprops={"arrowstyle": "->", "lw": 0.5 + count**0.5 / 3, "alpha": 0.5,
                                "color": "tab:red" if yb > ya else "tab:blue"})  # fmt: skip
    for p, (x, y) in where.items():
        names = [m.split(".", 1)[1] for m in modules[p]]
        lines = [", ".join(names[i : i + 5]) for i in range(0, len(names), 5)]
        ax.text(x, y, f"{p}/\n" + "\n".join(lines), ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.3"})  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, len(LAYERS) - 0.4)
    ax.axis("off")
    ax.set_title("pdeserve: packages by layer; arrows: imports (width ~ sqrt of module imports)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("architecture.png"))
    print(f"wrote {draw(p.parse_args().out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``pdeserve`` command: a table of subcommands, each imported only when run.

Importing lazily keeps ``pdeserve datagen`` free of torch and ``pdeserve
serve`` free of the learning stack; each subcommand parses its own arguments.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from datagen.ray_instance import report_stop

#: name -> (module, function, one-line help). The function takes argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "datagen": ("datagen.cli", "datagen_main", "generate train/val/test HDF5 datasets"),
    "exact": ("datagen.cli", "exact_main", "recompute a dataset's solutions with the exact solver"),
    "preview": ("datagen.cli", "preview_main", "plot sources and solutions of a dataset (PNG)"),
    "pretrain": ("training.pretrain", "main", "pre-train the FNO (Ray Train, or --no-ray)"),
    "export": ("training.export", "main", "export a trained model to ONNX and publish it"),
    "models": ("service.cli", "models_main", "list or show the models in the registry"),
    "eval": ("service.cli", "eval_main", "mean relative L2 of an ONNX model on a dataset"),
    "serve": ("service.cli", "serve_main", "start the solver service (Ray Serve, POST /solve)"),
    "solve": ("service.client_cli", "solve_main", "one solve through the service (.npy in/out)"),
    "emulate": ("service.client_cli", "emulate_main", "a dataset through the service to HDF5"),
    "demo": ("service.demo", "demo_main", "one solve per system, errors, timings and a PNG"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: pdeserve COMMAND [options]   (pdeserve COMMAND --help for details)", ""]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from datagen import __version__

        print(f"pdeserve {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pdeserve: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    try:
        return int(getattr(importlib.import_module(module), function)(rest) or 0)
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM while Ray ran: Ray is down by now
        return report_stop(f"pdeserve {name}", e)


if __name__ == "__main__":
    sys.exit(main())

"""``pdeserve serve`` until the service layer lands: say what is there."""

from __future__ import annotations

from collections.abc import Sequence


def serve_main(argv: Sequence[str]) -> int:
    from pdeserve.cli import usage

    print(
        "pdeserve: the solver service (POST /solve) is not built yet.\n"
        "What works today: generate data with the exact solver, check it, look at it,\n"
        "and pre-train the FNO on it:\n\n"
        "  .venv/bin/pdeserve datagen poisson --out data/poisson --n-train 1024 --n-val 128 "
        "--n-test 128\n"
        "  .venv/bin/pdeserve exact --input data/poisson/test.h5 --check\n"
        "  .venv/bin/pdeserve preview data/poisson/train.h5 --out poisson.png\n"
        "  .venv/bin/pdeserve pretrain --config smoke --no-ray\n\n" + usage()
    )
    return 0

"""The paper's transfer-learning experiments (Q1 to Q4 and the data savings of Fig. B.1).

    python -m experiments NAME --out DIR [--scale small|gpu|paper]
        [--ray | --no-ray [--jobs K]] [--gpu]

NAME is one of ``data-scaling`` (Fig. 3), ``model-scaling`` (Fig. 4), ``ood-shift``
(Fig. 5, Table 1), ``mixed`` (Fig. 6), ``data-savings`` (Fig. B.1), ``loss`` (not in
the paper: SYS-2 fine-tuned with MSE and with a relative-L2 loss), and two on
coefficient fields, one step beyond the paper: ``operator-shift`` (a base pre-trained
on constant coefficients fine-tuned to Darcy flow, smooth and two-phase media) and
``field-shift`` (Q3 on the new axis: a base pre-trained on smooth fields of contrast
1..10 fine-tuned to contrast 10..100 and to two-phase media). Every experiment
is a set of panels; a panel is one downstream task with curves of test error against
the number of downstream examples N: fine-tuning a pre-trained model (TL) and
training the same architecture from scratch, each point with its own learning-rate
sweep picked on validation error (paper A.4, through ``training.finetune``).

Everything lands under ``--out``: generated data (``data/``), pre-trained bases
(``registry/``), one JSON per point (``points/``, so a killed run resumes where it
stopped and experiments share the points they have in common), and per experiment
``NAME.json`` and ``NAME.png`` (with ``NAME-savings.png``: the from-scratch examples
that reach TL's error, by log-log interpolation of the scratch curve).

Without Ray, ``--jobs K`` runs K points at once in worker processes (the data and the
pre-trained bases are made first, so workers never race to make the same file): small
models leave most of a GPU, or of a core's worth of threads, idle in a single process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datagen.ray_instance import stops_cleanly
from experiments.catalogue import EXPERIMENTS
from experiments.report import markdown
from experiments.runner import run_experiment
from experiments.scales import SCALES
from modelstore.registry import RegistryError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments", description=__doc__.split("\n")[0])
    p.add_argument("name", choices=sorted(EXPERIMENTS))
    p.add_argument("--out", type=Path, required=True, help="results, plots, data, models")
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    ray = p.add_mutually_exclusive_group()
    ray.add_argument(
        "--ray",
        dest="ray",
        action="store_true",
        default=None,
        help="each sweep a Ray Tune job (default at paper scale)",
    )
    ray.add_argument(
        "--no-ray",
        dest="ray",
        action="store_false",
        help="every run in this process (default at small scale)",
    )
    p.add_argument("--gpu", action="store_true")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="K",
        help="without Ray: K points at once, each in its own process (default 1)",
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


@stops_cleanly("experiments")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run_experiment(
            args.name, args.out, SCALES[args.scale], args.ray, args.gpu, args.jobs
        )
    except (ValueError, FileNotFoundError, RegistryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(results))
    print("\n".join(results["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

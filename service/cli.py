"""``pdeserve models list|show`` and ``pdeserve eval``: the registry and ONNX models, no torch."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from datagen.dataset import open_dataset
from service.registry import Registry, RegistryError
from service.runner import DEFAULT_REGISTRY, OnnxSurrogate


def models_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="pdeserve models", description="list or show published models")
    p.add_argument("action", choices=("list", "show"))
    p.add_argument("ref", nargs="?", help="NAME[@VERSION] (show)")
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    args = p.parse_args(argv)
    registry = Registry(args.registry)
    try:
        if args.action == "list":
            for name in registry.names():
                for version in registry.versions(name):
                    card = registry.card(f"{name}@{version}")
                    overall = card.metrics.get("val_rel_l2/all")
                    shown = f"{overall:.2%}" if overall is not None else "-"
                    print(
                        f"{card.ref:24s} {card.model.class_:14s} {card.model.n_parameters:>12,d} "
                        f"params  n={card.resolution:<4d} val rel L2 {shown}  "
                        f"{card.created:%Y-%m-%d %H:%M}"
                    )
            return 0
        if not args.ref:
            p.error("show needs NAME[@VERSION]")
        print(registry.card(args.ref).model_dump_json(indent=2, by_alias=True))
        return 0
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def evaluate(model: OnnxSurrogate, path: str, batch: int = 32, progress: bool = True) -> dict:
    """Mean relative L2 of the model on a dataset file, overall and for its system."""
    with open_dataset(path) as reader:
        errors = []
        bar = tqdm(total=len(reader), unit="ex", desc="eval", disable=not progress)
        for chunk in reader.chunks(256):
            pred = model.predict(chunk.sources, chunk.coefficients, batch)
            diff = np.linalg.norm((pred - chunk.solutions).reshape(len(pred), -1), axis=1)
            errors.append(diff / np.linalg.norm(chunk.solutions.reshape(len(pred), -1), axis=1))
            bar.update(len(pred))
        bar.close()
        err = np.concatenate(errors)
        return {
            "mean_relative_l2": float(err.mean()),
            "per_system": {reader.system.name: float(err.mean())},
            "n": int(err.size),
        }


def eval_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="pdeserve eval", description="run an ONNX model on a dataset")
    p.add_argument("--model", help="NAME[@VERSION] or a model folder (default: the served model)")
    p.add_argument("--data", required=True, help="an HDF5 dataset, ours or the authors' layout")
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        model = OnnxSurrogate.load(args.model, args.registry)
        result = evaluate(model, args.data, args.batch, progress=not args.json)
    except (RegistryError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{model.card.ref}: mean relative L2 {result['mean_relative_l2']:.4%} "
            f"over {result['n']} examples"
        )
        for system, value in result["per_system"].items():
            print(f"  {system:22s} {value:.4%}")
    return 0

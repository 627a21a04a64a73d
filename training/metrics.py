"""The paper's metric and a JSON-lines metrics log."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def relative_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per example ||pred - target||_2 / ||target||_2 over the grid (B, n, n) -> (B,)."""
    diff = (pred.float() - target.float()).flatten(1).norm(dim=1)
    return diff / target.float().flatten(1).norm(dim=1).clamp_min(torch.finfo(torch.float32).tiny)


class MetricsLog:
    """Appends one JSON object per line; readable while the run goes on."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def write_all(self, records: list[dict]) -> None:
        self.path.unlink(missing_ok=True)
        for r in records:
            self.write(r)


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

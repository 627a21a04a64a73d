"""The data savings of Fig. B.1: how many from-scratch examples reach a fine-tuned error."""

from __future__ import annotations

import itertools
import math

# --- data savings (Fig. B.1) ---------------------------------------------------------


def scratch_equivalent(scratch_points: list[tuple[int, float]], error: float) -> float | None:
    """The N at which training from scratch reaches ``error``, log-log interpolated.

    The scratch curve is made monotone (its running minimum); None where ``error`` lies
    below the best scratch error (TL beats every scratch run) or above the first.
    """
    points = sorted((n, e) for n, e in scratch_points if n > 0)
    best, envelope = math.inf, []
    for n, e in points:
        best = min(best, e)
        envelope.append((n, best))
    for (n0, e0), (n1, e1) in itertools.pairwise(envelope):
        if e1 <= error <= e0:
            if e0 == e1:
                return float(n0)
            t = (math.log(e0) - math.log(error)) / (math.log(e0) - math.log(e1))
            return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))
    return None


def savings(panel: dict) -> list[dict]:
    """For each TL point of a panel: the from-scratch examples that reach its error."""
    scratch_curves = [c for c in panel["curves"] if c["kind"] == "scratch"]
    out = []
    for curve in panel["curves"]:
        if curve["kind"] != "tl":
            continue
        same = ("model", "loss")
        ref = next((s for s in scratch_curves if all(s.get(k) == curve.get(k) for k in same)), None)
        if ref is None:
            continue
        scratch_points = [(p["n"], p["error"]) for p in ref["points"]]
        best = min(e for _, e in scratch_points)
        for p in curve["points"]:
            n_eq = scratch_equivalent(scratch_points, p["error"])
            out.append(
                {
                    "curve": curve["label"],
                    "n": p["n"],
                    "error": p["error"],
                    "scratch_equivalent": n_eq,
                    "saving": None if n_eq is None else n_eq - p["n"],
                    # TL beat every scratch run: the saving is more than the curve shows
                    "beats_scratch": n_eq is None and p["error"] < best,
                    "largest_scratch_n": max(n for n, _ in scratch_points),
                }
            )
    return out

"""Which published model answers a request that names none.

The paper's paradigm is one foundation model and specialists fine-tuned from it per
regime. A request that names no model goes to the published model (the newest version
of each name) that

1. covers it: inside the card's envelope (its coefficients, and its source where the card
   records the training sources), with a graph for its kind of coefficients
   (:func:`service.envelope.envelope_reasons` finds nothing), and
2. has the lowest measured error on the request's band (:func:`modelstore.bands.band_for`:
   the card's mean relative L2 on held-out problems of the same system, field law and
   contrast or variation band) - the number auto's planner predicts from too.

A model without a measured error on the band is taken only where no covering model has
one; then the configured default if it covers the request, else the most specific
(the fewest systems and laws in its envelope). Equal errors go to the more specific. If
nothing covers the request, the default answers as it would have (its own envelope
policy: fall back, warn or reject). A request that names a model keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelstore.bands import band_for
from modelstore.registry import ModelCard
from service.envelope import envelope_reasons


@dataclass(frozen=True)
class Route:
    card: ModelCard
    why: str  # in words, for the response


def breadth(card: ModelCard) -> int:
    """How much an envelope covers: its systems, plus each system's field laws."""
    return sum(1 + (len(env.field.laws) if env.field else 0) for env in card.envelope.values())


def route(
    cards: list[ModelCard],
    default: ModelCard,
    pde: str,
    source: np.ndarray,
    coefficients: np.ndarray,
    stats: dict | None,
    reference: np.ndarray | None = None,
    source_stats: dict | None = None,
) -> Route:
    """The card that answers (see the module docstring). ``stats``: the fields'
    :func:`~service.envelope.field_statistics` (None for constant coefficients),
    ``reference``: their reference coefficients, ``source_stats``: the source's
    :func:`~modelstore.sources.source_statistics`, where the caller has them."""
    stats = stats or {}
    covering = [
        c
        for c in cards
        if not envelope_reasons(
            c, pde, source, coefficients, stats or None, reference, source_stats
        )
    ]
    if not covering:
        return Route(default, f"no published model covers the request; {default.ref} by default")
    measure = stats.get("contrast") if pde != "helmholtz" else stats.get("variation")
    measured = []
    for c in covering:
        band = band_for(c, pde, stats.get("law"), measure)
        if band is not None:
            measured.append((band.error, breadth(c), c.ref, c, band))
    if measured:
        error, _, _, card, band = min(measured, key=lambda m: m[:3])
        why = f"routed to {card.ref}: the lowest measured error on {band.key} ({error:.3g})"
        return Route(card, why)
    if any(c.ref == default.ref for c in covering):
        return Route(default, f"{default.ref} by default: no covering model measured this band")
    card = min(covering, key=lambda c: (breadth(c), c.ref))
    return Route(card, f"routed to {card.ref}: the most specific model covering the request")

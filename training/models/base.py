"""Model base class: a model records its constructor arguments so a checkpoint describes itself.

A subclass is registered under its class name; ``card()`` gives the JSON that
``build_model`` turns back into the same architecture, with no outside config.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any, ClassVar

from torch import nn

_REGISTRY: dict[str, type[ModelBase]] = {}


class ModelBase(nn.Module):
    """Records ``__init__`` arguments (JSON values only) and declares capabilities."""

    #: What the model supports, checked by callers rather than guessed.
    capabilities: ClassVar[dict[str, bool]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args: Any, **kw: Any) -> None:
            if not hasattr(self, "_init_args"):  # the outermost class records
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                recorded = dict(bound.arguments)
                recorded.pop("self")
                try:
                    json.dumps(recorded)
                except TypeError as e:
                    raise TypeError(f"{cls.__name__} arguments must be JSON values: {e}") from None
                object.__setattr__(self, "_init_args", recorded)
            init(self, *args, **kw)

        cls.__init__ = recording_init

    @property
    def init_args(self) -> dict[str, Any]:
        return dict(self._init_args)

    def card(self) -> dict[str, Any]:
        """Architecture description: class, constructor arguments, capabilities, size."""
        return {
            "class": type(self).__name__,
            "args": self.init_args,
            "capabilities": dict(self.capabilities),
            "n_parameters": self.n_parameters(),
        }

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(card: dict[str, Any]) -> ModelBase:
    """Rebuild an (untrained) model from ``card()`` output."""
    name = card.get("class")
    if name not in _REGISTRY:
        raise ValueError(f"unknown model class {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**card.get("args", {}))

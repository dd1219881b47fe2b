"""The model registry: ``build_model(name, **kwargs)`` and ``register``."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from torch import nn

from landscape import params

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a model builder available to ``build_model`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def model_names() -> list[str]:
    """Names accepted by ``build_model``."""
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model of the zoo by name.

    Every model takes ``input_shape`` and ``num_classes`` (the trainer infers both from the
    data set) plus its own keyword arguments; unknown ones are refused with the accepted list.

    Example:
        >>> from landscape.models import build_model
        >>> m = build_model("mlp", input_shape=(40,), num_classes=10, width=32)
        >>> sum(p.numel() for p in m.parameters())
        2698
    """
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, _REGISTRY, n=1)
        raise ValueError(
            f"unknown model {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; accepted: {', '.join(model_names())}"
        )
    fn = _REGISTRY[name]
    sig = inspect.signature(fn)
    accepted = [p for p in sig.parameters if sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        for key in kwargs:
            if key not in accepted:
                hint = difflib.get_close_matches(key, accepted, n=1)
                raise ValueError(
                    f"model {name!r} has no option {key!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; accepted: {', '.join(accepted)}"
                )
    model = fn(**kwargs)
    model.landscape_spec = {"name": name, "kwargs": dict(kwargs)}
    return model


def describe(model: nn.Module) -> dict[str, int | float]:
    """Parameter count and normalization-parameter count (SAM-ON: often < 0.1 %).

    Example:
        >>> from landscape.models import build_model, describe
        >>> describe(build_model("resnet1d", input_shape=(40,), num_classes=10))["norm_fraction"] < 0.05
        True
    """
    total = params.count(model, "all")
    norm = params.count(model, "norm")
    return {"parameters": total, "norm_parameters": norm, "norm_fraction": norm / max(total, 1)}

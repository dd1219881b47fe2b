"""The model registry: ``build_model(name, **kwargs)``, ``register_model`` and the parameter budget.

Every model is counted before its weights exist: the builder runs once on the ``meta`` device
(shapes only, no memory), under a hook that stops it as soon as the parameter budget is passed,
so a spec such as ``depth=10**7`` or ``width=10**9`` is refused in seconds instead of growing to
the memory limit (issue 10, item 4).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from landscape import params
from landscape.config import did_you_mean

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

#: Default parameter budget (number of scalars) of every model built by landscape.
MAX_PARAMETERS = 2_000_000_000
#: Default budget of parameter *tensors*: Python builds each module at some 100 us, so a spec
#: with millions of layers is stopped by this count long before the scalar budget is reached.
#: A 1000-layer ResNet has ~3600 parameter tensors, a 100-layer transformer ~1200.
MAX_PARAMETER_TENSORS = 10_000


_ON_META = "on the meta device: no weights were allocated"


class ModelBudgetError(ValueError):
    """A model larger than its parameter budget; raised before its weights are allocated."""


def register_model(name: str, fn: Callable[..., nn.Module] | None = None):
    """Make a model builder available to :func:`build_model` (and ``--model NAME``) by ``name``.

    Use as a decorator or call it with the builder. The builder takes keyword arguments
    (``input_shape`` and ``num_classes`` are filled in by the trainer) and returns an
    ``nn.Module``.

    Example:
        >>> from torch import nn
        >>> @register_model("doc_tiny_mlp")
        ... def tiny(input_shape=(4,), num_classes=2, width=3):
        ...     return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], width), nn.Linear(width, num_classes))
        >>> build_model("doc_tiny_mlp", width=5)[1].out_features
        5
    """

    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"model name must be a non-empty string without ':' (that marks an import path), got {name!r}")
        if not callable(f):
            raise ValueError(f"register_model({name!r}): the builder must be callable, got {type(f).__name__}")
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = f
        return f

    return deco if fn is None else deco(fn)


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator form of :func:`register_model` (used by the zoo's modules)."""
    return register_model(name)


def model_names() -> list[str]:
    """Names accepted by ``build_model``."""
    return sorted(_REGISTRY)


@contextmanager
def _count_parameters(what: str, max_parameters: int, max_tensors: int, where: str) -> Iterator[None]:
    """Raise :class:`ModelBudgetError` from inside the builder once a budget is passed.

    torch's global parameter-registration hook sees every ``register_parameter`` (also through
    ``module.weight = Parameter(...)``); only this thread's registrations are counted, and a
    tensor registered twice (weight tying) counts once.
    """
    seen: set[int] = set()
    total = [0]
    me = threading.get_ident()

    def hook(module: nn.Module, name: str, param: Any) -> None:
        if param is None or threading.get_ident() != me or id(param) in seen:
            return
        seen.add(id(param))
        total[0] += param.numel()
        if total[0] > max_parameters:
            raise ModelBudgetError(
                f"{what}: more than max_parameters={max_parameters:,} parameters (counted "
                f"{total[0]:,} before stopping, {where}); pass a larger max_parameters to allow it"
            )
        if len(seen) > max_tensors:
            raise ModelBudgetError(
                f"{what}: more than max_parameter_tensors={max_tensors:,} parameter tensors "
                f"({total[0]:,} parameters counted before stopping, {where}); "
                "pass a larger max_parameter_tensors to allow it"
            )

    handle = register_module_parameter_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def build_within_budget(
    factory: Callable[..., Any],
    kwargs: Mapping[str, Any],
    *,
    what: str,
    max_parameters: int = MAX_PARAMETERS,
    max_parameter_tensors: int = MAX_PARAMETER_TENSORS,
) -> Any:
    """``factory(**kwargs)``, first counted on the ``meta`` device, then built for real.

    The first call runs under ``torch.device("meta")`` (no memory for weights) and stops as soon
    as more than ``max_parameters`` scalars or ``max_parameter_tensors`` tensors are registered.
    A builder that cannot run on the meta device (any other exception there) is built directly,
    still under the same counting hook; its own errors then surface from that call.

    Raises:
        ModelBudgetError: naming ``what`` and the count.

    Example:
        >>> from torch import nn
        >>> build_within_budget(nn.Linear, {"in_features": 10**5, "out_features": 10**5},
        ...                     what="nn.Linear", max_parameters=10**6)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        landscape.models.registry.ModelBudgetError: nn.Linear: more than max_parameters=1,000,000 parameters ...
    """
    on_meta = True
    try:
        with _count_parameters(what, max_parameters, max_parameter_tensors, _ON_META), torch.device("meta"):
            probe = factory(**kwargs)
    except ModelBudgetError:
        raise
    except Exception:  # noqa: BLE001 - not meta-compatible (or a genuine error, raised again below)
        on_meta = False
    if on_meta:
        if isinstance(probe, nn.Module):
            n = sum(p.numel() for p in probe.parameters())
            if n > max_parameters:
                raise ModelBudgetError(f"{what}: {n:,} parameters exceed max_parameters={max_parameters:,} (counted on the meta device); pass a larger max_parameters to allow it")
        del probe
    with _count_parameters(what, max_parameters, max_parameter_tensors, "while building it"):
        return factory(**kwargs)


def build_model(
    name: str,
    *,
    max_parameters: int = MAX_PARAMETERS,
    max_parameter_tensors: int = MAX_PARAMETER_TENSORS,
    **kwargs,
) -> nn.Module:
    """Build a model of the zoo (or one added with :func:`register_model`) by name.

    Every model takes ``input_shape`` and ``num_classes`` (the trainer infers both from the
    data set) plus its own keyword arguments; unknown ones are refused with the accepted list.
    The model is counted on the meta device first and refused with :class:`ModelBudgetError`
    when it has more than ``max_parameters`` parameters (or ``max_parameter_tensors`` tensors),
    before any weight is allocated (these two names are reserved, never passed to the builder).

    Example:
        >>> from landscape.models import build_model
        >>> m = build_model("mlp", input_shape=(40,), num_classes=10, width=32)
        >>> sum(p.numel() for p in m.parameters())
        2698
        >>> build_model("mlp", depth=10**7, max_parameter_tensors=100)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        landscape.models.registry.ModelBudgetError: model spec {'name': 'mlp', 'kwargs': {'depth': 10000000}}: more than ...
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}" + did_you_mean(str(name), _REGISTRY)
            + f"; accepted: {', '.join(model_names())}"
        )
    fn = _REGISTRY[name]
    sig = inspect.signature(fn)
    accepted = [p for p in sig.parameters if sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        for key in kwargs:
            if key not in accepted:
                raise ValueError(
                    f"model {name!r} has no option {key!r}"
                    + did_you_mean(key, accepted)
                    + f"; accepted: {', '.join(accepted)}"
                )
    what = f"model spec {{'name': {name!r}, 'kwargs': {dict(kwargs)!r}}}"
    model = build_within_budget(fn, kwargs, what=what, max_parameters=max_parameters, max_parameter_tensors=max_parameter_tensors)
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

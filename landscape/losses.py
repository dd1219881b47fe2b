"""Losses of the objective: one place that turns a loss spec into a checked loss object.

A *loss spec* is what the user writes, in options or in a call:

* ``"ce"``: cross-entropy against class-index targets (``F.cross_entropy``), in nats;
* ``"mse"``: mean squared error, ``F.mse_loss``: against the one-hot encoding of class-index
  targets (the mean over examples *and* classes), or against float targets of the output's
  shape (regression);
* ``"package.module:attr"``: an import path naming a callable ``(output, target) -> scalar
  mean``, or an ``nn.Module`` class (instantiated without arguments) or factory;
* the callable or ``nn.Module`` itself, e.g. ``nn.CrossEntropyLoss(label_smoothing=0.1)``.

:func:`resolve_loss` returns a :class:`Loss`: the function, a JSON-plain ``spec`` string that
records it in ``config_json`` (the import path, or the module's class path and arguments), its
``units`` ("nats" for cross-entropy, "1" otherwise) and whether it is a classification loss.

**The data-set mean.** A loss callable is applied to one batch at a time and must return the
*mean* over that batch. The objective's data-set value is ``sum_i (b_i / N) L_i`` over the fixed
batches (``b_i`` examples in batch ``i``, ``N`` in all), which is the exact mean over all ``N``
examples for any loss that is a mean of per-example terms (cross-entropy with or without label
smoothing, MSE over examples and outputs), whatever the batch sizes. A callable that is not such
a mean (e.g. ``reduction="sum"``) gets the same weights, so its value is then not a data-set
mean. Classification error is reported only for class-index targets (see
:func:`class_targets`), whatever the loss.

``"mse"`` is written out rather than calling ``F.mse_loss``: in torch 2.13 forward-over-reverse
(``hvp(method="jvp")``) through ``F.mse_loss`` / ``nn.MSELoss`` fails inside torch; with such a
user loss use the reverse-over-reverse HVP methods (``"auto"``, the analyses' default, never
picks ``"jvp"``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> ls = resolve_loss(nn.CrossEntropyLoss(label_smoothing=0.1))
    >>> ls.spec, ls.units
    ('torch.nn.modules.loss:CrossEntropyLoss(ignore_index=-100, label_smoothing=0.1, reduction=mean)', 'nats')
    >>> z, y = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    >>> round(float(ls(z, y)), 4)  # log 3
    1.0986
    >>> resolve_loss("mse").units
    '1'
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOSS_NAMES", "Loss", "LossError", "class_targets", "describe", "import_object", "resolve_loss"]

LOSS_NAMES = ("ce", "mse")
ACCEPTED = ("ce, mse, an import path 'package.module:attr' naming a loss callable or nn.Module class, "
            "or a callable (output, target) -> scalar mean such as nn.CrossEntropyLoss(label_smoothing=0.1)")

# Losses whose value is a cross-entropy (a log-likelihood in nats) of class-index targets.
_CE_TYPES = (nn.CrossEntropyLoss, nn.NLLLoss)
_CE_FUNCTIONS = (F.cross_entropy, F.nll_loss)


class LossError(ValueError):
    """A loss spec that cannot be used, or a loss that does not return a scalar."""


def _mse(output: Tensor, target: Tensor) -> Tensor:
    # Written out, not F.mse_loss: forward-over-reverse (jvp of grad) through F.mse_loss fails
    # in torch 2.13 ("ZeroTensors are immutable") for a target without a tangent.
    if class_targets(output, target):
        return ((output - F.one_hot(target, output.shape[-1]).to(output.dtype)) ** 2).mean()
    if target.shape != output.shape:
        raise LossError(
            f"loss 'mse': targets of shape {tuple(target.shape)} for outputs of shape {tuple(output.shape)}; "
            "accepted: class indices of shape output.shape[:-1] (one-hot MSE) or float targets of the output's shape"
        )
    return ((output - target.to(output.dtype)) ** 2).mean()


def class_targets(output: Tensor, target: Tensor) -> bool:
    """True when ``target`` holds class indices for ``output``: an integer tensor of shape
    ``output.shape[:-1]`` (``(N,)`` for ``(N, C)`` logits). Only then is a classification error
    defined."""
    return (not target.is_floating_point() and not target.is_complex() and target.dtype != torch.bool
            and output.ndim == target.ndim + 1 and tuple(output.shape[:-1]) == tuple(target.shape))


def import_object(path: str, what: str = "object"):
    """The object named by ``"package.module:attr"`` (``attr`` may be dotted).

    Raises ``ValueError`` naming the path, what is missing and the accepted form (one message
    for every caller: losses, ``batch_fn``, ``output_fn``).

    Example:
        >>> import_object("torch.nn.functional:cross_entropy").__name__
        'cross_entropy'
    """
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{what} {path!r} is not an import path; accepted: 'package.module:attr'")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"{what} {path!r}: cannot import module {module!r} ({e}); "
                         "is it on PYTHONPATH (or next to the script)?") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what} {path!r}: module {module!r} has no attribute {attr!r}") from None
    return obj


def describe(obj) -> str:
    """A JSON-plain record of a callable: ``"module:qualname"``, plus the plain attributes of an
    ``nn.Module`` instance (``CrossEntropyLoss(label_smoothing=0.1, ...)``).

    Example:
        >>> import torch.nn.functional as F
        >>> describe(F.mse_loss)
        'torch.nn.functional:mse_loss'
    """
    if isinstance(obj, str):
        return obj
    target = type(obj) if isinstance(obj, nn.Module) else obj
    module, qual = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if not (module and qual):  # e.g. a functools.partial: record its type
        module, qual = type(obj).__module__, type(obj).__qualname__
    # "module:qualname" even for a local function or lambda ("<locals>" in it): a record, which
    # fails with a clear message if anyone tries to import it.
    path = f"{module}:{qual}"
    if isinstance(obj, nn.Module):
        plain = {k: v for k, v in sorted(vars(obj).items())
                 if not k.startswith("_") and k != "training" and isinstance(v, bool | int | float | str)}
        return path + "(" + ", ".join(f"{k}={v}" for k, v in plain.items()) + ")"
    return path


@dataclass(frozen=True)
class Loss:
    """A resolved loss: ``loss(output, target) -> scalar mean`` with its record and units.

    Attributes:
        fn: the underlying callable.
        spec: JSON-plain record for ``config_json`` ("ce", "mse", an import path, a description).
        units: "nats" for cross-entropy (also label-smoothed, and NLL), "1" otherwise.
        classification: the loss expects class-index targets (cross-entropy, NLL).
    """

    fn: Callable[[Tensor, Tensor], Tensor]
    spec: str
    units: str
    classification: bool

    def __call__(self, output: Tensor, target: Tensor) -> Tensor:
        value = self.fn(output, target)
        if not isinstance(value, Tensor) or value.ndim != 0:
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise LossError(
                f"loss {self.spec!r} returned {got}; accepted: a callable (output, target) -> scalar mean "
                "tensor (use reduction='mean')"
            )
        return value


def resolve_loss(spec) -> Loss:
    """The :class:`Loss` for ``spec`` ("ce", "mse", "package.module:attr", a callable or module).

    Raises:
        LossError: an unknown name, a path that does not import, or an object that is not callable.

    Example:
        >>> resolve_loss("ce").spec, resolve_loss("torch.nn:CrossEntropyLoss").units
        ('ce', 'nats')
        >>> resolve_loss("nll")
        Traceback (most recent call last):
        ...
        landscape.losses.LossError: loss='nll' is not accepted; accepted: ce, mse, an import path 'package.module:attr' naming a loss callable or nn.Module class, or a callable (output, target) -> scalar mean such as nn.CrossEntropyLoss(label_smoothing=0.1)
    """
    if isinstance(spec, Loss):
        return spec
    if spec == "ce":
        return Loss(F.cross_entropy, "ce", "nats", True)
    if spec == "mse":
        return Loss(_mse, "mse", "1", False)
    record = spec
    if isinstance(spec, str):
        if ":" not in spec:
            raise LossError(f"loss={spec!r} is not accepted; accepted: {ACCEPTED}")
        try:
            spec = import_object(spec, "loss")
        except ValueError as e:
            raise LossError(f"{e}; accepted: {ACCEPTED}") from None
    if inspect.isclass(spec):
        if not issubclass(spec, nn.Module):
            raise LossError(f"loss {describe(record)!r} is a class but not an nn.Module; accepted: {ACCEPTED}")
        spec = spec()
    if not callable(spec):
        raise LossError(f"loss of type {type(spec).__name__} is not accepted; accepted: {ACCEPTED}")
    ce = isinstance(spec, _CE_TYPES) or spec in _CE_FUNCTIONS
    text = record if isinstance(record, str) and not isinstance(spec, nn.Module) else describe(spec)
    return Loss(spec, text, "nats" if ce else "1", ce)

"""Data forms -> fixed ``(inputs, targets)`` batches, and model outputs -> one tensor.

The one place that knows what users pass as data and what their models return, so
:class:`~landscape.objective.Objective` (and through it every analysis) accepts the same forms.

Data (:func:`collect`), in order, the first ``max_samples`` examples:

* an ``ArrayDataset`` or a ``TensorDataset`` (fast path: tensor slices, no per-example loop;
  a ``TensorDataset``'s first tensor is the input, its second the target, further ones ignored);
* an ``(x, y)`` tuple or list of two tensors (``x`` may also be a tuple or dict of tensors);
* a ``DataLoader`` (one that reads a ``TensorDataset`` / ``ArrayDataset`` in order takes the fast
  path; any other is iterated as it batches);
* any other map-style ``torch.utils.data.Dataset`` (examples collated with ``default_collate``
  in chunks);
* an iterable of batches, each a tuple/list ``(inputs, targets, ...)`` or a dict (targets under
  ``labels``/``label``/``targets``/``target``/``y``; inputs under ``x``/``inputs``/``input``, or
  else all other entries as a dict of keyword arguments, HuggingFace style: ``input_ids``,
  ``attention_mask``);
* anything else through ``batch_fn(batch) -> (inputs, targets)``, applied to each batch an
  iterable or ``DataLoader`` yields (or to each collated chunk of a map-style dataset).

*Inputs* are a tensor (``model(x)``), a tuple of tensors (``model(*x)``) or a dict of tensors
(``model(**x)``). *Targets* are class indices (integer tensor) or float tensors of any shape
(regression); their first dimension is the example dimension, like every input tensor's.

Model outputs (:func:`model_output`): a tensor, a tuple/list (its first element), a dict or
object with ``logits`` (HuggingFace ``ModelOutput``), or ``output_fn(output) -> tensor``.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    >>> xs, ys = collect(TensorDataset(x, y), max_samples=6)
    >>> [tuple(b[0].shape) for b in split(xs, ys, 4)]
    [(4, 3), (2, 3)]
    >>> model_output({"logits": torch.ones(2, 3)}).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    TensorDataset,
)
from torch.utils.data._utils.collate import default_collate

from landscape.data.base import ArrayDataset

__all__ = ["DataError", "Inputs", "as_call", "collect", "describe_type", "map_tensors", "model_output", "num_examples",
           "split", "to_device"]

Inputs = Union[Tensor, tuple[Tensor, ...], dict[str, Tensor]]  # noqa: UP007 (a runtime alias)

TARGET_KEYS = ("labels", "label", "targets", "target", "y")
INPUT_KEYS = ("x", "inputs", "input")
# Examples collated at a time for a generic map-style Dataset.
CHUNK = 512

ACCEPTED_DATA = (
    "an ArrayDataset, a TensorDataset or other map-style torch Dataset, a DataLoader, an (x, y) tuple of "
    "tensors, or an iterable of batches that are tuples/lists (inputs, targets, ...) or dicts "
    f"(targets under one of {', '.join(TARGET_KEYS)}); anything else through batch_fn(batch) -> (inputs, targets)"
)
ACCEPTED_INPUTS = "a tensor, a tuple of tensors or a dict of tensors"
ACCEPTED_OUTPUTS = ("a tensor, a tuple/list (first element used), a dict or object with 'logits', "
                    "or pass output_fn=(output -> tensor)")


class DataError(TypeError):
    """Data in a form the objective does not accept (the message lists the accepted forms)."""


# ------------------------------------------------------------------ structure helpers
def _is_inputs(x) -> bool:
    if isinstance(x, Tensor):
        return True
    if isinstance(x, tuple | list):
        return len(x) > 0 and all(isinstance(t, Tensor) for t in x)
    if isinstance(x, Mapping):
        return len(x) > 0 and all(isinstance(t, Tensor) for t in x.values())
    return False


def _leaves(x: Inputs) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, Mapping):
        return list(x.values())
    return list(x)


def map_tensors(x: Inputs, fn: Callable[[Tensor], Tensor]) -> Inputs:
    """``fn`` applied to every tensor of the inputs (a tensor, a tuple or a dict), same form."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: fn(t) for k, t in x.items()}
    return tuple(fn(t) for t in x)


def num_examples(x: Inputs) -> int:
    """Length of the example (first) dimension of the inputs."""
    return int(_leaves(x)[0].shape[0])


def describe_type(obj) -> str:
    """A short description of what was received, for error messages (type, shape, items)."""
    if isinstance(obj, Tensor):
        return f"tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, tuple | list):
        return f"{type(obj).__name__} of {len(obj)} items ({', '.join(type(t).__name__ for t in obj[:4])})"
    if isinstance(obj, Mapping):
        return f"{type(obj).__name__} with keys {list(obj)[:8]}"
    return type(obj).__name__


def _check(inputs, targets, where: str) -> tuple[Inputs, Tensor]:
    if not _is_inputs(inputs):
        raise DataError(f"data: {where} has inputs of type {describe_type(inputs)}; accepted inputs: {ACCEPTED_INPUTS}")
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    if isinstance(inputs, Mapping):
        inputs = dict(inputs)
    if not isinstance(targets, Tensor):
        raise DataError(f"data: {where} has targets of type {describe_type(targets)}; accepted targets: a tensor of "
                        "class indices or of float values (any shape, examples first)")
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in _leaves(inputs)} | {int(targets.shape[0]) if targets.ndim else -1}
    if len(sizes) != 1 or -1 in sizes:
        raise DataError(
            f"data: {where} has inputs ({describe_type(inputs)}) and targets ({describe_type(targets)}) without a common "
            "first (example) dimension; every input tensor and the targets must have the same number of rows"
        )
    return inputs, targets


def _from_batch(item, batch_fn, where: str) -> tuple[Inputs, Tensor]:
    """One batch as ``(inputs, targets)``."""
    if batch_fn is not None:
        out = batch_fn(item)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise DataError(f"data: batch_fn returned {describe_type(out)} for {where}; accepted: a pair (inputs, targets)")
        return _check(out[0], out[1], f"{where} (after batch_fn)")
    if isinstance(item, Mapping):
        key = next((k for k in TARGET_KEYS if k in item), None)
        if key is None:
            raise DataError(f"data: {where} is a dict with keys {list(item)} and no targets; accepted target keys: "
                            f"{', '.join(TARGET_KEYS)} (or pass batch_fn(batch) -> (inputs, targets))")
        ikey = next((k for k in INPUT_KEYS if k in item), None)
        inputs = item[ikey] if ikey is not None else {k: v for k, v in item.items() if k != key}
        return _check(inputs, item[key], where)
    if isinstance(item, tuple | list) and len(item) >= 2:
        return _check(item[0], item[1], where)
    raise DataError(f"data: {where} is a {describe_type(item)}; accepted batches: tuples/lists (inputs, targets, ...) "
                    "or dicts; accepted data: " + ACCEPTED_DATA)


def _cat(parts: list[Inputs]) -> Inputs:
    first = parts[0]
    try:
        if isinstance(first, Tensor):
            return torch.cat(parts)
        if isinstance(first, Mapping):
            keys = list(first)
            if any(list(p) != keys for p in parts):
                raise DataError(f"data: batches have different input keys ({keys} and others)")
            return {k: torch.cat([p[k] for p in parts]) for k in keys}
        return tuple(torch.cat([p[j] for p in parts]) for j in range(len(first)))
    except RuntimeError as e:  # e.g. sequences padded to different lengths per batch
        raise DataError(f"data: batches cannot be joined into one set ({e}); give every batch the same shape "
                        "apart from the example dimension (pad to one length)") from None


def _take(x: Inputs, stop: int) -> Inputs:
    return map_tensors(x, lambda t: t[:stop])


# ------------------------------------------------------------------ public
def _fast(data) -> tuple[Tensor, Tensor] | None:
    """The (inputs, targets) tensors of in-memory data sets, without a per-example loop."""
    if isinstance(data, DataLoader):
        # Only a loader that yields the data set in order, all of it, unchanged.
        bs = data.batch_sampler
        if not (type(bs) is BatchSampler and isinstance(bs.sampler, SequentialSampler) and not bs.drop_last
                and data.collate_fn is default_collate):
            return None
        data = data.dataset
    # Exact types only: a subclass may change __getitem__ (a transform), which slicing would skip.
    if type(data) is ArrayDataset:
        return data.x, data.y  # never augmented here
    if type(data) is TensorDataset:
        if len(data.tensors) < 2:
            raise DataError(f"data: a TensorDataset of {len(data.tensors)} tensor(s); accepted: TensorDataset(inputs, "
                            "targets, ...) with at least two tensors")
        return data.tensors[0], data.tensors[1]
    return None


def collect(data, max_samples: int | None = None, batch_fn: Callable[[Any], Any] | None = None) -> tuple[Inputs, Tensor]:
    """The first ``max_samples`` examples of ``data`` (in order) as ``(inputs, targets)``.

    Raises:
        DataError: a form not listed in the module docstring (the message names what was
            received and lists what is accepted).
        ValueError: the data hold no examples.
    """
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
    if batch_fn is None:
        fast = _fast(data)
        if fast is None and isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[1], Tensor) \
                and _is_inputs(data[0]):
            fast = data[0], data[1]
        if fast is not None:
            inputs, targets = _check(fast[0], fast[1], "the (inputs, targets) pair")
            if max_samples is not None:
                inputs, targets = _take(inputs, max_samples), targets[:max_samples]
            return _nonempty(inputs, targets)
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__") \
            and hasattr(data, "__getitem__"):
        n = len(data) if max_samples is None else min(len(data), max_samples)

        def chunks():
            for s in range(0, n, CHUNK):
                yield default_collate([data[i] for i in range(s, min(s + CHUNK, n))])

        batches, what = chunks(), f"{type(data).__name__} examples"
    elif isinstance(data, Iterable) and not isinstance(data, str | bytes | Tensor | Mapping):
        batches, what = iter(data), f"a batch of {type(data).__name__}"
    else:
        raise DataError(f"data of type {describe_type(data)} is not accepted; accepted: {ACCEPTED_DATA}")
    xs, ys, count = [], [], 0
    for j, item in enumerate(batches):
        inputs, targets = _from_batch(item, batch_fn, f"{what} (batch {j})")
        if max_samples is not None and count + int(targets.shape[0]) > max_samples:
            inputs, targets = _take(inputs, max_samples - count), targets[: max_samples - count]
        xs.append(inputs)
        ys.append(targets)
        count += int(targets.shape[0])
        if max_samples is not None and count >= max_samples:
            break
    if not xs:
        raise ValueError(f"data: {type(data).__name__} yielded no batches")
    return _nonempty(_cat(xs), torch.cat(ys) if len(ys) > 1 else ys[0])


def _nonempty(inputs: Inputs, targets: Tensor) -> tuple[Inputs, Tensor]:
    if int(targets.shape[0]) == 0:
        raise ValueError("data holds no examples (check max_samples and the data set)")
    return inputs, targets


def split(inputs: Inputs, targets: Tensor, batch_size: int | None) -> list[tuple[Inputs, Tensor]]:
    """Consecutive batches of ``batch_size`` examples (the last may be smaller); ``None``: one."""
    n = int(targets.shape[0])
    bs = n if batch_size is None else batch_size
    return [(map_tensors(inputs, lambda t, s=s: t[s : s + bs]), targets[s : s + bs]) for s in range(0, n, bs)]


def to_device(x: Inputs, device: torch.device, dtype: torch.dtype | None = None) -> Inputs:
    """Move to ``device``; floating tensors (only) are cast to ``dtype`` when given."""
    def move(t: Tensor) -> Tensor:
        t = t.to(device)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    return map_tensors(x, move)


def as_call(inputs: Inputs) -> tuple[tuple, dict]:
    """Positional and keyword arguments of the model call: ``model(x)``, ``model(*x)``, ``model(**x)``."""
    if isinstance(inputs, Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return tuple(inputs), {}


def model_output(out, output_fn: Callable[[Any], Tensor] | None = None) -> Tensor:
    """The tensor the loss is applied to, from what the model returned.

    Raises:
        TypeError: the output (after ``output_fn``) is none of the accepted forms; the message
            names the type received.
    """
    if output_fn is not None:
        out = output_fn(out)
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        value = out.get("logits")
    elif isinstance(out, tuple | list):
        value = out[0] if out else None
    else:
        value = getattr(out, "logits", None)
    if isinstance(value, Tensor):
        return value
    got = describe_type(out) + (" (after output_fn)" if output_fn is not None else "")
    if isinstance(out, Mapping | tuple | list) or hasattr(out, "__dict__"):
        got += f"; its fields: {list(out)[:8] if isinstance(out, Mapping) else _fields(out)}"
    raise TypeError(f"the model returned a {got} and no tensor could be taken from it; accepted model outputs: "
                    f"{ACCEPTED_OUTPUTS}")


def _fields(out) -> list[str]:
    if isinstance(out, tuple | list):
        return [type(t).__name__ for t in itertools.islice(out, 8)]
    return [k for k in vars(out) if not k.startswith("_")][:8]

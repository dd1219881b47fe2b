"""What every analysis does the same way: options from its keywords, and the result's stamp.

* :func:`make_options` builds an analysis' frozen options dataclass from the keyword values
  of its public function, keeping the options JSON-plain: a ``torch.dtype`` becomes its name,
  a loss / ``batch_fn`` / ``output_fn`` callable is recorded by import path (or, for an
  ``nn.Module`` loss, its class path and arguments) and handed to the objective as an override;
  a ``torch.device`` becomes its name (``"cuda:1"``).
* :func:`stamp` writes the attributes every result carries: ``analysis``, ``config_json``,
  versions (``landscape_version``, ``torch_version``), the objective's sizes, loss and costs
  (``calls_loss``, ``calls_grad``, ``calls_hvp``, ``calls_logits``: batch evaluations), where and
  how it computed (``compute_device``, ``compute_dtype``, ``tf32``, ``micro_batch_size``) and its
  peak memory (``peak_memory_bytes``, ``peak_memory_baseline_bytes``, ``peak_memory_device``,
  ``peak_memory_measure``; :mod:`landscape.memory`).
* :func:`comparable`: a result without its measured attributes (peak memory, wall times), for
  comparing runs with ``identical``.

Example:
    >>> import torch
    >>> from landscape.objective import ObjectiveOptions
    >>> opts, over = make_options(ObjectiveOptions, {"dtype": torch.float64, "loss": torch.nn.MSELoss()})
    >>> opts.dtype, opts.loss, sorted(over)
    ('float64', 'torch.nn.modules.loss:MSELoss(reduction=mean)', ['loss'])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import xarray as xr

from landscape.config import Options
from landscape.losses import describe
from landscape.memory import MEMORY_ATTRS, PeakMemory
from landscape.objective import Objective, device_name, dtype_name

__all__ = ["MEASURED_ATTRS", "NON_OPTION_KEYWORDS", "comparable", "make_options", "stamp"]

# Attributes that measure the run (machine, load, what ran before), not the result: two equal
# runs may differ in them. Prefixes end with "_".
MEASURED_ATTRS = (*MEMORY_ATTRS, "seconds_")

# Keywords of analysis functions that are not options (they do not change the result, so they
# are not in config_json).
NON_OPTION_KEYWORDS = ("progress",)

# Options fields that may be given as objects to a function and are recorded by name.
_OBJECT_FIELDS = ("loss", "batch_fn", "output_fn")


def make_options(cls: type[Options], values: Mapping[str, Any]) -> tuple[Options, dict[str, Any]]:
    """``(options, objective overrides)`` from a function's keyword values (extra keys ignored)."""
    kwargs: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        if f.name == "dtype":
            try:
                v = dtype_name(v)
            except ValueError:
                pass  # the options' own check names the field and the accepted values
        elif f.name == "device":
            v = device_name(v)
        elif f.name in _OBJECT_FIELDS and v is not None and not isinstance(v, str):
            overrides[f.name] = v
            v = describe(v)
        kwargs[f.name] = v
    return cls(**kwargs), overrides


def _version() -> str:
    import landscape

    return landscape.__version__


def comparable(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without the attributes that measure the run (:data:`MEASURED_ATTRS`: peak memory,
    wall times), so two equal runs give ``comparable(a).identical(comparable(b))``.

    Example:
        >>> ds = xr.Dataset(attrs={"peak_memory_bytes": 5, "seconds_trace": 0.1, "analysis": "x"})
        >>> comparable(ds).attrs
        {'analysis': 'x'}
    """
    out = ds.copy()
    out.attrs = {k: v for k, v in ds.attrs.items()
                 if not any(k == m or (m.endswith("_") and k.startswith(m)) for m in MEASURED_ATTRS)}
    return out


def stamp(ds: xr.Dataset, analysis: str, options: Options, obj: Objective | None = None, *,
          memory: PeakMemory | None = None, device=None, dtype=None) -> xr.Dataset:
    """Add the common attributes to ``ds`` (in place) and return it. Apart from the peak memory
    (:data:`MEASURED_ATTRS`; compare with :func:`comparable`), everything stamped is
    deterministic. ``memory``, ``device`` and ``dtype``: the meter, device and dtype of an
    analysis without an objective (with one, the objective's are used)."""
    attrs: dict[str, Any] = {
        "analysis": analysis,
        "config_json": options.to_json(),
        "landscape_version": _version(),
        "torch_version": str(torch.__version__),  # TorchVersion is a str subclass h5py cannot write
    }
    if obj is not None:
        attrs.update(
            num_parameters=int(obj.numel),
            num_samples=int(obj.num_samples),
            num_batches=int(obj.num_batches),
            loss=obj.loss_spec.spec,
            loss_units=obj.loss_spec.units,
            **{f"calls_{k}": int(obj.calls[k]) for k in ("loss", "grad", "hvp", "logits")},
            micro_batch_size=int(obj.micro_batch_size or 0),
            tf32=int(obj.tf32),
        )
        memory, device, dtype = obj.memory, obj.device, obj.theta0.dtype
    if device is not None:
        attrs["compute_device"] = str(device)
    if dtype is not None:
        attrs["compute_dtype"] = str(dtype).replace("torch.", "")
    if memory is not None:
        attrs.update(memory.attrs())
    ds.attrs.update(attrs)
    return ds

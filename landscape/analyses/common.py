"""What every analysis does the same way: options from its keywords, and the result's stamp.

* :func:`make_options` builds an analysis' frozen options dataclass from the keyword values
  of its public function, keeping the options JSON-plain: a ``torch.dtype`` becomes its name,
  a loss / ``batch_fn`` / ``output_fn`` callable is recorded by import path (or, for an
  ``nn.Module`` loss, its class path and arguments) and handed to the objective as an override.
* :func:`stamp` writes the attributes every result carries: ``analysis``, ``config_json``,
  versions (``landscape_version``, ``torch_version``), the objective's sizes, loss and costs
  (``calls_loss``, ``calls_grad``, ``calls_hvp``, ``calls_logits``: batch evaluations).

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
from landscape.objective import Objective, dtype_name

__all__ = ["NON_OPTION_KEYWORDS", "make_options", "stamp"]

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
        elif f.name in _OBJECT_FIELDS and v is not None and not isinstance(v, str):
            overrides[f.name] = v
            v = describe(v)
        kwargs[f.name] = v
    return cls(**kwargs), overrides


def _version() -> str:
    import landscape

    return landscape.__version__


def stamp(ds: xr.Dataset, analysis: str, options: Options, obj: Objective | None = None) -> xr.Dataset:
    """Add the common attributes to ``ds`` (in place) and return it. Everything stamped is
    deterministic (no wall times), so equal runs give ``identical`` datasets."""
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
        )
    ds.attrs.update(attrs)
    return ds

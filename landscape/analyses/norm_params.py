"""Distributions of the normalization parameters gamma (scale) and beta (shift), layer by layer.

SAM-ON (Mueller et al., 2023) finds that perturbing only these parameters - often < 0.1 % of the
network - recovers most of SAM's benefit, and its Section 5 follows how they move in training.
This analysis gives, per normalization layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm, selected
by module type as in :mod:`landscape.params`), summary statistics and a histogram of gamma and
beta, so a folder of checkpoints becomes their distribution over training steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import nn

from landscape.analyses.common import stamp
from landscape.config import Options, check
from landscape.memory import PeakMemory
from landscape.params import is_norm_module

PARAMS = ("gamma", "beta")
_ATTR = {"gamma": "weight", "beta": "bias"}


@dataclass(frozen=True)
class NormParamsOptions(Options):
    """Options of :func:`norm_params`.

    ``bins``: histogram bins per layer and parameter. ``gamma_range`` / ``beta_range``: fixed
    histogram ranges ``(lo, hi)``, so histograms of different checkpoints share their bins;
    ``None`` uses each layer's own (min, max) (the ``bin_edges`` variable records them).
    ``quantiles``: levels in [0, 1] (linear interpolation, as ``numpy.quantile``).
    """

    bins: int = 20
    quantiles: tuple[float, ...] = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
    gamma_range: tuple[float, float] | None = None
    beta_range: tuple[float, float] | None = None

    def required_samples(self) -> None:
        """No data is read (the batch runner's sample-count check has nothing to compare)."""
        return None

    def validate(self) -> None:
        # from_dict turns lists into tuples only for plain tuple fields, not `tuple | None`.
        for name in ("quantiles", "gamma_range", "beta_range"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        check(isinstance(self.bins, int) and self.bins >= 1, f"NormParamsOptions.bins must be an integer >= 1, got {self.bins!r}")
        check(len(self.quantiles) >= 1 and all(0.0 <= q <= 1.0 for q in self.quantiles),
              f"NormParamsOptions.quantiles must be levels in [0, 1], got {self.quantiles!r}")
        for name in ("gamma_range", "beta_range"):
            r = getattr(self, name)
            check(r is None or (len(r) == 2 and float(r[0]) < float(r[1])),
                  f"NormParamsOptions.{name} must be (lo, hi) with lo < hi, or None; got {r!r}")


def norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Normalization layers that have at least one affine parameter, by module name."""
    return {
        name: m for name, m in model.named_modules()
        if is_norm_module(m) and any(getattr(m, a, None) is not None for a in _ATTR.values())
    }


def norm_params(
    model: nn.Module,
    data=None,
    *,
    bins: int = 20,
    quantiles: tuple[float, ...] = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0),
    gamma_range: tuple[float, float] | None = None,
    beta_range: tuple[float, float] | None = None,
) -> xr.Dataset:
    """Per-layer statistics and histograms of normalization gamma and beta.

    Args:
        model: any network; its normalization layers are found by module type.
        data: unused (accepted so every analysis has the signature ``(model, data, **options)``).
        bins, quantiles, gamma_range, beta_range: see :class:`NormParamsOptions`.

    Returns:
        Dataset with dims ``layer`` (module names), ``param`` (``gamma``, ``beta``), ``quantile``,
        ``bin`` and ``bin_edge``: ``mean``, ``std`` (population, ddof=0), ``abs_mean``,
        ``quantile_value``, ``histogram`` (counts, numpy semantics: the last bin is closed),
        ``bin_edges``, ``size`` (channels per layer); a layer without beta (``bias=False``) has
        NaN statistics and zero counts for it. ``layer_type`` names each layer's class.

    Raises:
        ValueError: when the model has no normalization layer with affine parameters.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> ds = norm_params(m, bins=4)
        >>> float(ds["mean"].sel(layer="1", param="gamma"))
        1.0
    """
    opts = NormParamsOptions(bins=bins, quantiles=tuple(quantiles), gamma_range=gamma_range, beta_range=beta_range)
    # Host statistics of a few thousand numbers, wherever the model lives: no device option (each
    # gamma/beta is copied to the host once, in float64).
    memory = PeakMemory(torch.device("cpu"))
    layers = norm_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no normalization layer with affine parameters "
            "(BatchNorm, LayerNorm, GroupNorm, RMSNorm), so there are no gamma/beta to analyse"
        )
    q = np.asarray(opts.quantiles, dtype=np.float64)
    L, P, B = len(layers), len(PARAMS), opts.bins
    mean = np.full((L, P), np.nan)
    std = np.full((L, P), np.nan)
    abs_mean = np.full((L, P), np.nan)
    qval = np.full((L, P, len(q)), np.nan)
    hist = np.zeros((L, P, B), dtype=np.int64)
    edges = np.full((L, P, B + 1), np.nan)
    size = np.zeros(L, dtype=np.int64)
    ranges = {"gamma": opts.gamma_range, "beta": opts.beta_range}
    with torch.no_grad():
        for i, module in enumerate(layers.values()):
            for j, p in enumerate(PARAMS):
                t = getattr(module, _ATTR[p], None)
                if t is None:
                    continue
                v = t.detach().to("cpu", torch.float64).reshape(-1).numpy()
                size[i] = v.size
                mean[i, j] = v.mean()
                std[i, j] = v.std()
                abs_mean[i, j] = np.abs(v).mean()
                qval[i, j] = np.quantile(v, q)
                r = ranges[p]
                counts, e = np.histogram(v, bins=B, range=None if r is None else (float(r[0]), float(r[1])))
                hist[i, j], edges[i, j] = counts, e
    dims2, unit = ("layer", "param"), "1"
    ds = xr.Dataset(
        {
            "mean": (dims2, mean, {"long_name": "mean of the parameter over the layer's channels", "units": unit}),
            "std": (dims2, std, {"long_name": "standard deviation over channels (ddof=0)", "units": unit}),
            "abs_mean": (dims2, abs_mean, {"long_name": "mean absolute value over channels", "units": unit}),
            "quantile_value": (dims2 + ("quantile",), qval,
                               {"long_name": "quantile over channels (linear interpolation)", "units": unit}),
            "histogram": (dims2 + ("bin",), hist, {"long_name": "number of channels per bin", "units": "1"}),
            "bin_edges": (dims2 + ("bin_edge",), edges, {"long_name": "histogram bin edges", "units": unit}),
            "size": (("layer",), size, {"long_name": "number of channels (entries of gamma)", "units": "1"}),
        },
        coords={
            "layer": ("layer", list(layers), {"long_name": "normalization layer (module name)", "units": "1"}),
            "param": ("param", list(PARAMS), {"long_name": "gamma = scale (weight), beta = shift (bias)", "units": "1"}),
            "quantile": ("quantile", q, {"long_name": "quantile level", "units": "1"}),
            "bin": ("bin", np.arange(B), {"long_name": "histogram bin index", "units": "1"}),
            "layer_type": ("layer", [type(m).__name__ for m in layers.values()],
                           {"long_name": "normalization layer class", "units": "1"}),
        },
    )
    return stamp(ds, "norm_params", opts, memory=memory, device=torch.device("cpu"), dtype=torch.float64)


__all__ = ["NormParamsOptions", "norm_layers", "norm_params"]

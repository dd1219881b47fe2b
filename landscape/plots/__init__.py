"""Publication figures from saved results: read xarray Datasets, return matplotlib Figures.

Every figure function takes a Dataset - one result file (:func:`landscape.results.read_result`),
a folder combined over (run, step) (:func:`landscape.results.open_results`) or an analysis'
direct output - and returns a :class:`matplotlib.figure.Figure`; :func:`save` writes it as PNG
and PDF atomically. One color per run throughout (pass the same ``colors`` mapping, see
:func:`run_colors`). This package depends on xarray and matplotlib only: it never imports torch.

Example:
    >>> from landscape.results import open_results  # doctest: +SKIP
    >>> from landscape import plots  # doctest: +SKIP
    >>> fig = plots.sharpness_vs_rho(open_results("results", "sharpness"))  # doctest: +SKIP
    >>> plots.save(fig, "figures/sharpness_rho")  # doctest: +SKIP
"""

from __future__ import annotations

from landscape.plots.common import PlotError, run_colors, save
from landscape.plots.diagnostics import diagnostics_dataset, training_diagnostics
from landscape.plots.feature_rank import feature_rank_bars, feature_rank_vs_step
from landscape.plots.hessian import slq_density, spectral_density, top_eigenvalues, trace
from landscape.plots.momentum import momentum_directions, momentum_vs_step
from landscape.plots.norm_params import norm_param_histograms, rebin
from landscape.plots.robustness import robust_accuracy_vs_eps
from landscape.plots.sharpness import sharpness_vs_accuracy, sharpness_vs_rho, sharpness_vs_step
from landscape.plots.slices import (
    interpolation_curves,
    slice_contour,
    slice_curves,
    slice_surface,
    trajectory_plane,
)
from landscape.plots.training import combine_histories, history_dataset, training_curves

__all__ = [
    "PlotError",
    "combine_histories",
    "diagnostics_dataset",
    "feature_rank_bars",
    "feature_rank_vs_step",
    "history_dataset",
    "interpolation_curves",
    "momentum_directions",
    "momentum_vs_step",
    "norm_param_histograms",
    "rebin",
    "robust_accuracy_vs_eps",
    "run_colors",
    "save",
    "sharpness_vs_accuracy",
    "sharpness_vs_rho",
    "sharpness_vs_step",
    "slice_contour",
    "slice_curves",
    "slice_surface",
    "slq_density",
    "spectral_density",
    "top_eigenvalues",
    "trace",
    "trajectory_plane",
    "training_curves",
    "training_diagnostics",
]

"""Hessian spectra: top eigenvalues, trace and spectral density, for any parameter group.

One analysis, three estimators, all from Hessian-vector products of one
:class:`~landscape.objective.Objective` (the loss over a fixed data set, batch by batch):

* **top eigenvalues** by Lanczos with full reorthogonalization, stopped on relative Ritz
  residuals (:mod:`landscape.analyses.lanczos`), plus the ratio ``lambda_max / lambda_k`` that SAM
  (Foret et al. 2021, Section 4.2 / Fig. 3) reports;
* **the trace**, deflated by what the eigenvalue part already paid for: with ``B`` the Lanczos
  basis of that run, continued by a third of the budget (``trace_deflation="lanczos"``,
  default), ``tr(H) = tr(B^T H B) + tr((I - BB^T) H (I - BB^T))``, the first term known exactly
  (the sum of the Lanczos ``alpha``), the second estimated from the rest of the
  ``trace_samples`` budget by Hutchinson (default), XTrace (Epperly, Tropp & Webber 2024) or
  Hutch++, stopped on the standard error
  (:mod:`landscape.analyses.trace`). ``trace_deflation="ritz"`` deflates by the ``top_k`` Ritz
  vectors only, ``"none"`` not at all (the pre-XTrace behaviour with ``trace_method="hutch++"``);
* **the spectral density** by stochastic Lanczos quadrature (Ghorbani et al. 2019; SAM Fig. 3:
  about 90 steps, >= 10 Rademacher starts; here 10 starts x 45 steps by default, from a measured
  convergence curve, see :class:`HessianOptions`), broadened with an explicit Gaussian width ``sigma``
  (default 1 % of the spread of the quadrature nodes), with the raw nodes and weights kept so the
  density can be re-smoothed (:mod:`landscape.analyses.slq`). The eigenvalue run starts from a
  Rademacher vector, so it is SLQ run 0 (``slq_reuse=True``): truncated, cut at its first
  restart, or continued to ``slq_steps`` (``attrs["slq_reused_steps"]`` HVPs saved).

The trace does not depend on ``density`` (its deflation basis is the eigenvalue run's, before
the SLQ continuation), so turning one part off leaves the others unchanged.

BatchNorm is in eval mode by default (running statistics): the loss is then a sum over examples
and the Hessian does not depend on the batch split. ``bn_mode="train"`` is a different matrix
(batch statistics over the fixed partition; it changes with ``batch_size``) - see
:class:`~landscape.objective.Objective`. The model is never modified.

Example:
    >>> from landscape.models import build_model
    >>> from landscape.data import get_dataset
    >>> ds = get_dataset("synthetic", num_samples=64, input_shape=(8,), num_classes=3)
    >>> model = build_model("mlp", input_shape=(8,), num_classes=3, width=8, depth=1)
    >>> res = hessian_spectrum(model, ds, top_k=3, slq_runs=2, slq_steps=20, trace_samples=30)
    >>> res.eigenvalues.dims, int(res.hvps.sel(part="eigenvalues")) > 0
    (('k',), True)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import xarray as xr

from landscape.analyses.common import make_options, stamp
from landscape.analyses.lanczos import _order, as_matvec, lanczos, lanczos_tridiagonal
from landscape.analyses.slq import default_grid, default_sigma, gaussian_density, slq
from landscape.analyses.trace import TraceEstimate, deflated_trace, hutchinson, hutchpp, xtrace
from landscape.config import check
from landscape.objective import Objective, ObjectiveOptions
from landscape.progress import Progress

__all__ = ["HessianOptions", "hessian_spectrum"]

PARTS = ("eigenvalues", "trace", "density")


@dataclass(frozen=True)
class HessianOptions(ObjectiveOptions):
    """Options of :func:`hessian_spectrum` (same names, same defaults), on top of the shared
    objective options of :class:`~landscape.objective.ObjectiveOptions`.

    Defaults and where they come from: ``slq_runs=10`` starts (Ghorbani et al. 2019, used by
    SAM Fig. 3) of ``slq_steps=45`` steps, half of their 90: measured against dense float64
    truth (``bench/bench_density.py``), the L1 distance of the broadened density stops
    improving at 45 steps (10 runs near initialization: 0.025 at 30, 0.020 at 45, 60 and 90
    steps) and the moments ``tr(H^k)/P`` do not depend on the steps (Gauss quadrature is exact
    to degree 2 steps - 1), only on the runs; with run 0 reused from the eigenvalue run the
    density costs at most 450 HVPs instead of 900; ``trace_samples=100`` HVPs: 33 continue the eigenvalue run's
    Lanczos basis, 67 Hutchinson probes on its complement (``trace_method="hutchinson"``,
    ``trace_deflation="lanczos"``: on a fitted ResNet 0.11x PyHessian's error at 100 HVPs, 0.07x
    at 200, 20 seeds; XTrace on the complement was no better, see the README) and
    ``trace_rtol=1e-3`` (a stop at 1e-2 lost up to 3x accuracy at 200 HVPs on the fit seeds);
    ``tol=1e-3`` relative Ritz residual (bounds the eigenvalue error; the error itself is
    typically far smaller, about residual^2 / gap).
    """

    top_k: int = 5
    which: Literal["LA", "SA", "LM"] = "LA"
    tol: float = 1e-3
    max_steps: int | None = None
    eigenvectors: bool = False
    trace: bool = True
    trace_method: Literal["hutchinson", "xtrace", "hutch++"] = "hutchinson"
    trace_samples: int = 100
    trace_rtol: float = 1e-3
    density: bool = True
    slq_runs: int = 10
    slq_steps: int = 45
    grid_points: int = 1000
    sigma: float | None = None
    trace_deflation: Literal["lanczos", "ritz", "none"] = "lanczos"
    slq_reuse: bool = True
    hvp_method: Literal["auto", "jvp", "linearize", "double-backward", "retained-graph"] = "auto"
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        pos = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
        check(pos(self.top_k), f"HessianOptions.top_k must be a positive int, got {self.top_k!r}")
        check(self.tol > 0, f"HessianOptions.tol must be > 0, got {self.tol!r}")
        check(self.max_steps is None or (pos(self.max_steps) and self.max_steps >= self.top_k),
              f"HessianOptions.max_steps must be None or an int >= top_k={self.top_k}, got {self.max_steps!r}")
        check(pos(self.trace_samples) and self.trace_samples >= 3,
              f"HessianOptions.trace_samples (matvec budget) must be an int >= 3, got {self.trace_samples!r}")
        check(self.trace_rtol >= 0, f"HessianOptions.trace_rtol must be >= 0, got {self.trace_rtol!r}")
        check(pos(self.slq_runs), f"HessianOptions.slq_runs must be a positive int, got {self.slq_runs!r}")
        check(pos(self.slq_steps), f"HessianOptions.slq_steps must be a positive int, got {self.slq_steps!r}")
        check(pos(self.grid_points) and self.grid_points >= 2,
              f"HessianOptions.grid_points must be an int >= 2, got {self.grid_points!r}")
        check(self.sigma is None or self.sigma > 0, f"HessianOptions.sigma must be None or > 0, got {self.sigma!r}")
        check(isinstance(self.slq_reuse, bool), f"HessianOptions.slq_reuse must be True or False, got {self.slq_reuse!r}")


def _seeds(seed: int) -> list[torch.Generator]:
    # Independent streams for the three parts: turning one part off leaves the others unchanged.
    states = np.random.SeedSequence(seed).generate_state(len(PARTS), dtype=np.uint64)
    return [torch.Generator().manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF) for s in states]


def hessian_spectrum(
    model: torch.nn.Module,
    data,
    *,
    batch_size: int | None = 256,
    max_samples: int | None = None,
    bn_mode: str = "eval",
    loss: str | Callable = "ce",
    logit_normalize: bool = False,
    params: str = "all",
    dtype: str | torch.dtype | None = None,
    batch_fn: str | Callable | None = None,
    output_fn: str | Callable | None = None,
    top_k: int = 5,
    which: str = "LA",
    tol: float = 1e-3,
    max_steps: int | None = None,
    eigenvectors: bool = False,
    trace: bool = True,
    trace_method: str = "hutchinson",
    trace_samples: int = 100,
    trace_rtol: float = 1e-3,
    density: bool = True,
    slq_runs: int = 10,
    slq_steps: int = 45,
    grid_points: int = 1000,
    sigma: float | None = None,
    trace_deflation: str = "lanczos",
    slq_reuse: bool = True,
    hvp_method: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """Top eigenvalues, trace and spectral density of the loss Hessian of a parameter group.

    Args:
        model: the network (never modified).
        data: anything :class:`~landscape.objective.Objective` accepts (:mod:`landscape.inputs`:
            a ``Dataset``, ``DataLoader``, ``(x, y)`` tuple, iterable of tuple or dict batches).
        batch_size, max_samples, bn_mode, loss, logit_normalize, params, dtype, batch_fn,
            output_fn: the shared objective options (:class:`~landscape.objective.ObjectiveOptions`);
            ``loss`` also takes a callable or ``nn.Module``, ``dtype`` a ``torch.dtype``,
            ``batch_fn`` / ``output_fn`` callables (all recorded by name in ``config_json``).
            ``params`` selects the Hessian block of a group (the other parameters, and frozen
            ones with ``requires_grad=False``, fixed); ``bn_mode="train"`` is a different,
            partition-dependent matrix.
        top_k: number of eigenvalues (``<= `` the group's dimension).
        which: "LA" largest (default; lambda_max), "SA" smallest (most negative), "LM" largest |.|.
        tol: relative Ritz-residual tolerance of Lanczos.
        max_steps: Lanczos budget (default ``min(P, max(20 top_k, 100))``).
        eigenvectors: also store the top-k Ritz vectors (dim ``parameter``, ``P`` floats each,
            with coordinates ``parameter_name`` (the tensor) and ``parameter_offset``).
        trace, trace_method, trace_samples, trace_rtol: estimate the trace (of the remainder
            after ``trace_deflation``) with Hutchinson (default), XTrace or Hutch++, at most
            ``trace_samples`` HVPs, stopping when the standard error is
            ``<= trace_rtol * |trace|``.
        density, slq_runs, slq_steps, grid_points, sigma: the SLQ density on ``grid_points``
            points; ``sigma`` ``None``: 1 % of the spread of the nodes.
        trace_deflation: "lanczos" (default): the eigenvalue run is continued by
            ``trace_samples // 3`` steps and the estimator works on the complement of its
            Lanczos basis, whose part of the trace (``sum(alpha)``) is exact; "ritz": the
            complement of its ``top_k`` Ritz vectors (no extra steps); "none": the whole space.
        slq_reuse: use the eigenvalue Lanczos run (Rademacher start) as SLQ run 0.
        hvp_method: "auto" ("retained-graph" for a single in-memory batch: the gradient graph
            is built once and each product is one backward pass; else "double-backward", which
            recomputes per product in constant memory), "jvp" (forward-over-reverse),
            "linearize", "double-backward" or "retained-graph"; see ``Objective.hvp_operator``
            for measured speeds.
        seed: seeds the Lanczos start, the trace probes and the SLQ starts (independently).
        progress: a progress bar on a terminal or in a notebook, log lines otherwise
            (:mod:`landscape.progress`); ``False``: silent.

    Returns:
        ``xr.Dataset`` with ``eigenvalues(k)``, ``eigenvalue_ratio(k)``, ``residuals(k)``,
        ``converged(k)``, optional ``eigenvectors(k, parameter)``, ``trace`` and
        ``trace_stderr``, ``density(grid)``, ``slq_nodes(run_slq, node)`` and
        ``slq_weights(run_slq, node)``, ``hvps(part)`` (full-data HVPs per part), ``loss``; attrs
        ``config_json``, ``sigma``, the grid, sizes, costs and timings. Eigenvalues, trace,
        nodes and the loss are in the loss's units ("nats" for cross-entropy, else "1").

    Raises:
        GroupError: the parameter group is empty.
        NonFiniteLossError: the loss at the checkpoint is NaN or infinite.
        ValueError: ``top_k`` larger than the group's dimension, or a bad option.
    """
    opts, objects = make_options(HessianOptions, locals())
    obj = Objective.from_options(model, data, opts, **objects)
    P = obj.numel
    if opts.top_k > P:
        raise ValueError(
            f"top_k={opts.top_k} is larger than the dimension of parameter group {opts.params!r} "
            f"({P} parameters); use top_k <= {P}"
        )
    loss0 = obj.check_finite()
    units = obj.loss_spec.units
    method = obj.resolve_hvp_method(opts.hvp_method)
    base = obj.hvp_operator(method=method)
    counts = dict.fromkeys(PARTS, 0)
    seconds = dict.fromkeys(PARTS, 0.0)
    part = ["eigenvalues"]
    # The Lanczos count is a budget (it stops on its tolerance); the bar is an upper bound.
    budget = (opts.max_steps or min(P, max(20 * opts.top_k, 100))) \
        + (opts.trace_samples if opts.trace else 0) + (opts.slq_runs * opts.slq_steps if opts.density else 0)
    bar = Progress(budget, f"hessian P={P}", enabled=progress)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        counts[part[0]] += 1
        bar.update(1, postfix=part[0])
        return base(v)

    with bar:
        return _spectrum(obj, opts, matvec, counts, seconds, part, loss0, units, method)


def _trace(opts: HessianOptions, matvec, P: int, eig, g_trace: torch.Generator, device, counts: dict) -> TraceEstimate:
    """The trace part of :func:`hessian_spectrum` after its eigenvalue run ``eig`` (kept basis):
    one function, so that benchmarks can run exactly this code on a dense matrix."""
    rtol = opts.trace_rtol if opts.trace_rtol > 0 else None
    deflate = opts.trace_deflation != "none"
    if deflate:
        # tr(H) = tr(B^T H B) + tr((I - BB^T) H (I - BB^T)): the first term is known from the
        # eigenvalue run without an HVP (sum of the Lanczos alpha, or of the Ritz values);
        # only the deflated remainder is estimated from the trace budget.
        budget = opts.trace_samples
        if opts.trace_deflation == "lanczos":
            # A Krylov basis deflates far better than a random sketch of the same cost: a third
            # of the budget continues the eigenvalue run in place (the SLQ reuse continues the
            # same run, so those steps are not paid twice), the rest probes the remainder.
            krylov = budget // 3
            tri, basis = lanczos_tridiagonal(as_matvec(matvec, P, device)[0], eig.state[1].rows[0],
                                             eig.steps + krylov,
                                             restart_generator=g_trace, resume=eig.state)
            budget -= counts["trace"]
            B, exact = basis.rows, float(np.sum(tri.alpha))
        else:
            theta, S = eig.state[0].eig()
            wanted = _order(theta, opts.which)[: opts.top_k]
            B = torch.as_tensor(S[:, wanted].T.copy(), dtype=torch.float64, device=eig.basis.device) @ eig.basis
            B, exact = torch.linalg.qr(B.T)[0].T, float(theta[wanted].sum())
        spent = counts["trace"]
        est = deflated_trace(matvec, B, exact, P, method=opts.trace_method, max_matvecs=max(budget, 1),
                             rtol=rtol, seed=g_trace, device=device) if budget > 0 else None
        if est is None:  # the Krylov part spanned the space (tiny groups)
            est = TraceEstimate(exact, 0.0, 0, opts.trace_method, exact, np.zeros(0), True, [], B.shape[0])
        est.matvecs += spent
        del B
    else:
        estimator = {"xtrace": xtrace, "hutch++": hutchpp, "hutchinson": hutchinson}[opts.trace_method]
        est = estimator(matvec, P, max_matvecs=opts.trace_samples, rtol=rtol, seed=g_trace, device=device)
    return est


def _spectrum(obj, opts, matvec, counts, seconds, part, loss0, units, method) -> xr.Dataset:
    P = obj.numel

    g_eig, g_trace, g_slq = _seeds(opts.seed)
    t0 = time.perf_counter()
    deflate = opts.trace and opts.trace_deflation != "none"
    reuse = opts.density and opts.slq_reuse
    eig = lanczos(matvec, P, k=opts.top_k, which=opts.which, tol=opts.tol, max_steps=opts.max_steps,
                  seed=g_eig, eigenvectors=opts.eigenvectors, device=obj.device, keep_basis=deflate or reuse)
    seconds["eigenvalues"] = time.perf_counter() - t0
    if not bool(eig.converged.all()):
        warnings.warn(
            f"hessian_spectrum: {int((~eig.converged).sum())} of top_k={opts.top_k} eigenvalues did not reach "
            f"tol={opts.tol} within {eig.steps} Lanczos steps (see `residuals`); raise max_steps",
            RuntimeWarning, stacklevel=4,
        )
    lam = eig.eigenvalues.numpy()
    k = np.arange(1, opts.top_k + 1)
    data_vars: dict = {
        "eigenvalues": ("k", lam, {"long_name": f"Hessian eigenvalues ({opts.which}, Ritz values)", "units": units}),
        "eigenvalue_ratio": ("k", lam[0] / lam, {
            "long_name": "lambda_1 / lambda_k (SAM Section 4.2 reports lambda_max / lambda_5)", "units": "1"}),
        "residuals": ("k", eig.residuals.numpy(), {
            "long_name": "Ritz residual norm |beta_m s_mk| (bound on the eigenvalue error)", "units": "1"}),
        "converged": ("k", eig.converged.numpy().astype(np.int8), {
            "long_name": "residual <= tol * |eigenvalue| (1 = yes)", "units": "1"}),
        "loss": ((), loss0, {"long_name": f"mean loss at the checkpoint ({obj.loss_spec.spec})", "units": units}),
    }
    coords: dict = {"k": ("k", k, {"long_name": "eigenvalue rank", "units": "1"})}
    if opts.eigenvectors:
        data_vars["eigenvectors"] = (("k", "parameter"), eig.eigenvectors.cpu().numpy(), {
            "long_name": "unit Ritz vectors over the flattened parameter group", "units": "1"})
        # Which tensor each entry belongs to (select order, row-major within a tensor).
        coords["parameter_name"] = ("parameter", np.repeat(np.array(obj.names, dtype=object),
                                                           [math.prod(sh) for sh in obj.shapes]),
                                    {"long_name": "parameter tensor of each entry", "units": "1"})
        coords["parameter_offset"] = ("parameter", np.concatenate([np.arange(math.prod(sh)) for sh in obj.shapes]),
                                      {"long_name": "flat (row-major) index within the tensor", "units": "1"})
    attrs: dict = {}

    if opts.trace:
        part[0] = "trace"
        t0 = time.perf_counter()
        est = _trace(opts, matvec, P, eig, g_trace, obj.device, counts)
        seconds["trace"] = time.perf_counter() - t0
        name = opts.trace_method + (f", deflated by the {est.deflation}-vector {opts.trace_deflation} basis"
                                    if deflate else "")
        data_vars["trace"] = ((), est.trace, {"long_name": f"Hessian trace ({name})", "units": units})
        data_vars["trace_stderr"] = ((), est.stderr, {
            "long_name": "standard error of the trace estimate", "units": units})
        attrs["trace_converged"] = int(est.converged)
        attrs["trace_deflation_rank"] = int(est.deflation)
        attrs["trace_exact_part"] = float(est.exact_part)

    if opts.density:
        part[0] = "density"
        t0 = time.perf_counter()
        # The eigenvalue run started from a Rademacher vector: up to its first restart it is an
        # SLQ run from that vector, so it is run 0 (truncated, cut, or continued; slq.py).
        first = eig.state if reuse else None
        reused = min(len(first[0].alpha), opts.slq_steps, (first[0].restart_steps or [P])[0] + 1) if reuse else 0
        nodes, weights = slq(matvec, P, runs=opts.slq_runs, steps=opts.slq_steps, seed=g_slq, device=obj.device,
                             first_run=first)
        attrs["slq_reused_steps"] = int(reused)
        s = float(opts.sigma) if opts.sigma is not None else default_sigma(nodes)
        grid = default_grid(nodes, s, points=opts.grid_points)
        dens = gaussian_density(nodes, weights, grid, s)
        seconds["density"] = time.perf_counter() - t0
        # A non-index coordinate: every checkpoint has its own grid, and an index would stop
        # open_results from combining files over (run, step).
        coords["eigenvalue"] = ("grid", grid.numpy(), {"long_name": "eigenvalue (density grid)", "units": units})
        data_vars["density_sigma"] = ((), s, {
            "long_name": "standard deviation of the Gaussian broadening of the SLQ density", "units": units})
        coords["run_slq"] = ("run_slq", np.arange(opts.slq_runs), {"long_name": "SLQ start vector", "units": "1"})
        coords["node"] = ("node", np.arange(nodes.shape[1]), {"long_name": "quadrature node index", "units": "1"})
        data_vars["density"] = ("grid", dens.numpy(), {
            "long_name": "spectral density (SLQ, Gaussian broadening sigma)", "units": "1"})
        data_vars["slq_nodes"] = (("run_slq", "node"), nodes.numpy(), {
            "long_name": "SLQ nodes (Ritz values; NaN after an early invariant subspace)", "units": units})
        data_vars["slq_weights"] = (("run_slq", "node"), weights.numpy(), {
            "long_name": "SLQ weights (squared first eigenvector components; sum 1 per run)", "units": "1"})
        attrs.update(sigma=s, grid_min=float(grid[0]), grid_max=float(grid[-1]), grid_points=int(grid.numel()))

    coords["part"] = ("part", list(PARTS), {"long_name": "part of the analysis", "units": "1"})
    data_vars["hvps"] = ("part", np.array([counts[p] for p in PARTS], dtype=np.int64), {
        "long_name": "Hessian-vector products over the whole data set", "units": "1"})
    attrs.update(
        params=str(opts.params),
        bn_mode=opts.bn_mode,
        hvp_method=method,
        lanczos_steps=int(eig.steps),
        lanczos_restarts=int(eig.restarts),
        seconds_eigenvalues=seconds["eigenvalues"],
        seconds_trace=seconds["trace"],
        seconds_density=seconds["density"],
        note=("bn_mode='train': BatchNorm uses batch statistics over the fixed partition; this is a different "
              "matrix from the eval-mode Hessian and depends on batch_size") if opts.bn_mode == "train" else "",
    )
    return stamp(xr.Dataset(data_vars, coords=coords, attrs=attrs), "hessian", opts, obj)

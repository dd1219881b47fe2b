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
    >>> per_layer = hessian_spectrum(model, ds, top_k=2, slq_runs=2, slq_steps=10, trace_samples=9,
    ...                              params="each:layer", progress=False)
    >>> list(per_layer.group.values), per_layer.eigenvalues.dims
    (['body.1', 'head'], ('group', 'k'))
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
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
from landscape.params import GroupSpec, expand_groups, is_per_group, owner_type, select
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

    params: str | tuple[str, ...] = "all"
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
        if isinstance(self.params, tuple):
            # One result per group (see hessian_spectrum); the shared checks take one group.
            check(len(self.params) >= 1 and all(isinstance(p, str) and p.strip() for p in self.params),
                  f"HessianOptions.params must be a group spec or a non-empty list of them, got {self.params!r}")
            ObjectiveOptions.validate(self.replace(params=self.params[0]))
        else:
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
    params: str | Sequence[str] = "all",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    micro_batch_size: int | None = None,
    tf32: bool = False,
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
        params: one group spec (:mod:`landscape.params`: ``"all"``,
            ``"norm"``, ``"B3"``, a union ``"B2+B3"`` or ``"glob:fc.*|head.*"``): one spectrum,
            no ``group`` dim. Or several groups, one spectrum each along a ``group`` dimension
            (:func:`landscape.params.expand_groups`): ``"each:layer"`` (one group per module
            that directly owns trainable parameters, named by the module, in model order),
            ``"each:stage"`` (``B1``, ``B2``, ... of the model's ``stages``), or a list, one
            group per item (``["B1", "B2", "B3"]``; an item may be any group spec or an exact
            parameter name). Unlike :func:`landscape.params.select`, a list here is *not* the
            union of its items: write a union as one spec (``"B1+B2"``, ``"glob:a.*|b.*"``).
            Each group's spectrum is that of its diagonal block ``H_bb`` (the other
            parameters fixed), the same numbers as a call with ``params=`` that group alone.
            Shared by all groups: the data, staged once into one objective over the union of
            the groups (each group is a view of it, :meth:`Objective.with_params`), and the
            loss check. Built per group: the HVP operator, so with ``"retained-graph"`` each
            block's gradient graph. One graph over all parameters cannot be shared instead:
            a product with it costs a full-network HVP, while a block's graph only reaches
            back to its block (measured on a 7.5k-parameter ResNet-1D, one batch of 256, a
            loaded 2-core CPU: 230-250 ms per full product vs 74-150 ms per stage block, and
            130-160 ms to build a block's graph, less than one product, against ~1,100
            products per group with the defaults).
        device, micro_batch_size, tf32: where it computes (``None``: the model's device; "cpu",
            "cuda", "cuda:N" or a ``torch.device``; the model is never moved, the objective's
            copies of its parameters are), pieces of at most ``micro_batch_size`` examples per
            batch (the same function, less memory) and TF32 matmuls on CUDA (off by default);
            see :class:`~landscape.objective.Objective` and README "Analyses on a GPU".
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

        Several groups: the same variables with a leading ``group`` dim (coordinate ``group``:
        the item of the list or the module / stage name; ``group_module``: the class of the one
        module owning the group, e.g. "Conv2d", else ""), the density grid ``eigenvalue`` per
        group ``(group, grid)``, ``group_parameters(group)`` (each block's dimension), every
        numeric per-group attribute (``lanczos_steps``, ``sigma``, ``grid_min``, timings, ...) as
        a variable along ``group``, ``loss`` a scalar; Ritz vectors (``eigenvectors=True``) on
        one ``parameter`` dim that concatenates the blocks, with a ``parameter_group``
        coordinate (``res.eigenvectors.isel(parameter=res.parameter_group.values == "B1")``).
        Attributes ``params`` (the spec as given; a list as JSON) and ``groups`` (how many);
        ``num_parameters`` and ``calls_*`` are totals over the union and all groups.

    Raises:
        GroupError: the parameter group is empty (or, for several groups: one of them is, an
            unknown ``each:`` form, ``each:stage`` on a model without ``stages``, two groups
            with the same name).
        NonFiniteLossError: the loss at the checkpoint is NaN or infinite.
        ValueError: ``top_k`` larger than the group's dimension (of any group), or a bad option.
    """
    opts, objects = make_options(HessianOptions, locals())
    groups = expand_groups(model, opts.params) if is_per_group(opts.params) else None
    if groups is not None:
        # One objective over the union of the groups stages the data once; each block is a
        # view of it (Objective.with_params), never a second staging.
        objects["params"] = _union(model, groups)
    obj = Objective.from_options(model, data, opts, **objects)
    if groups is None:
        return _one_group(obj, opts, progress)
    blocks = [obj.with_params(spec) for _, spec in groups]
    small = [(name, b.numel) for (name, _), b in zip(groups, blocks) if b.numel < opts.top_k]
    if small:  # before any group is computed
        raise ValueError(
            f"top_k={opts.top_k} is larger than the dimension of parameter group {small[0][0]!r} "
            f"({small[0][1]} parameters); use top_k <= {min(b.numel for b in blocks)} "
            f"(the smallest of the {len(groups)} groups)"
        )
    loss0 = obj.check_finite()
    parts = [_one_group(b, opts.replace(params=name), progress, loss0=loss0, label=name)
             for (name, _), b in zip(groups, blocks)]
    return _concat_groups(parts, [name for name, _ in groups], [owner_type(model, spec) for _, spec in groups], opts, obj)


def _union(model: torch.nn.Module, groups: list[tuple[str, GroupSpec]]) -> list[str]:
    """The parameter names of all groups together, in ``named_parameters`` order."""
    chosen: set[str] = set()
    for _, spec in groups:
        chosen.update(select(model, spec))
    return [n for n, _ in model.named_parameters() if n in chosen]


def _one_group(obj: Objective, opts: HessianOptions, progress: bool, *, loss0: float | None = None,
               label: str | None = None) -> xr.Dataset:
    """The spectrum of ``obj``'s group: checks, the HVP operator, the progress bar, ``_spectrum``."""
    P = obj.numel
    if opts.top_k > P:
        raise ValueError(
            f"top_k={opts.top_k} is larger than the dimension of parameter group {opts.params!r} "
            f"({P} parameters); use top_k <= {P}"
        )
    loss0 = obj.check_finite() if loss0 is None else loss0
    units = obj.loss_spec.units
    method = obj.resolve_hvp_method(opts.hvp_method)
    base = obj.hvp_operator(method=method)
    counts = dict.fromkeys(PARTS, 0)
    seconds = dict.fromkeys(PARTS, 0.0)
    part = ["eigenvalues"]
    # The Lanczos count is a budget (it stops on its tolerance); the bar is an upper bound.
    budget = (opts.max_steps or min(P, max(20 * opts.top_k, 100))) \
        + (opts.trace_samples if opts.trace else 0) + (opts.slq_runs * opts.slq_steps if opts.density else 0)
    bar = Progress(budget, f"hessian{'' if label is None else ' ' + label} P={P}", enabled=progress)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        counts[part[0]] += 1
        bar.update(1, postfix=part[0])
        return base(v)

    with bar:
        return _spectrum(obj, opts, matvec, counts, seconds, part, loss0, units, method)


# Attributes every result gets from ``stamp`` (restamped once for a grouped result: totals over
# the groups, the options as given); ``num_parameters`` becomes the variable ``group_parameters``.
_STAMPED = ("analysis", "config_json", "landscape_version", "torch_version", "num_parameters", "num_samples",
            "num_batches", "loss", "loss_units", "calls_loss", "calls_grad", "calls_hvp", "calls_logits")


def _concat_groups(parts: list[xr.Dataset], names: list[str], kinds: list[str], opts: HessianOptions,
                   obj: Objective) -> xr.Dataset:
    """One result with a ``group`` dimension from the per-group results.

    The layout depends on the options only, never on the values, so results of several
    checkpoints combine in :func:`landscape.results.open_results`: every numeric attribute of a
    group's result (Lanczos steps, ``sigma``, the grid ends, timings, ...) becomes a variable along
    ``group``, string attributes stay attributes; the density grid coordinate ``eigenvalue`` is
    per group (``(group, grid)``); SLQ runs that stopped early are padded as :func:`slq` pads
    them (NaN nodes, zero weights); Ritz vectors are stored on one ``parameter`` dimension that
    concatenates the groups' blocks, with a ``parameter_group`` coordinate.
    """
    numeric = sorted({k for d in parts for k, v in d.attrs.items()
                      if k not in _STAMPED and isinstance(v, (int, float, np.number)) and not isinstance(v, bool)})
    eigvecs = None
    if "eigenvectors" in parts[0]:
        eigvecs = _concat_eigenvectors(parts, names)
        parts = [d.drop_vars(["eigenvectors", "parameter_name", "parameter_offset"]) for d in parts]
    cleaned = []
    for d in parts:
        extra = {k: ((), d.attrs.get(k, np.nan), _attr_var_attrs(k, obj.loss_spec.units)) for k in numeric}
        extra["group_parameters"] = ((), int(d.attrs["num_parameters"]), {
            "long_name": "dimension of the group's Hessian block", "units": "1"})
        d = d.assign(extra)
        d.attrs = {}
        cleaned.append(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # xarray's notice about future concat defaults
        out = xr.concat(cleaned, dim="group", data_vars="all", coords="all", compat="equals", join="outer",
                        fill_value={"slq_weights": 0.0}, combine_attrs="override")
    out = out.assign_coords(group=("group", np.array(names, dtype=object), {
        "long_name": "parameter group (spec or module name)", "units": "1"}),
        group_module=("group", np.array(kinds, dtype=object), {
            "long_name": "class of the module owning the whole group ('' for several)", "units": "1"}))
    out["loss"] = parts[0]["loss"]  # the same point and data for every group
    if eigvecs is not None:
        out = out.assign(eigenvectors=eigvecs)
    first = parts[0].attrs
    out.attrs = {}
    out.attrs.update({k: v for k, v in first.items() if k not in _STAMPED and k not in numeric})
    out.attrs["params"] = opts.params if isinstance(opts.params, str) else json.dumps(list(opts.params))
    out.attrs["groups"] = len(names)
    return stamp(out, "hessian", opts, obj)


def _attr_var_attrs(key: str, units: str) -> dict[str, str]:
    """``long_name`` and ``units`` of a variable made from a one-group result's attribute."""
    unit = "s" if key.startswith("seconds") else units if key in ("sigma", "grid_min", "grid_max") else "1"
    return {"long_name": f"{key} of the group's spectrum (an attribute of a one-group result)", "units": unit}


def _concat_eigenvectors(parts: list[xr.Dataset], names: list[str]) -> xr.DataArray:
    """Ritz vectors of every group on one ``parameter`` dim: group g's block holds its vectors."""
    vecs = np.concatenate([d["eigenvectors"].values for d in parts], axis=1)
    return xr.DataArray(vecs, dims=("k", "parameter"), coords={
        "k": parts[0]["k"],
        "parameter_name": ("parameter", np.concatenate([d["parameter_name"].values for d in parts]),
                           dict(parts[0]["parameter_name"].attrs)),
        "parameter_offset": ("parameter", np.concatenate([d["parameter_offset"].values for d in parts]),
                             dict(parts[0]["parameter_offset"].attrs)),
        "parameter_group": ("parameter", np.repeat(np.array(names, dtype=object), [d.sizes["parameter"] for d in parts]),
                            {"long_name": "parameter group of each entry (its Hessian block)", "units": "1"}),
    }, attrs={**parts[0]["eigenvectors"].attrs,
              "long_name": "unit Ritz vectors of each group's block (entries of that group only)"})


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

"""Adaptive worst-case, one-step and average-case m-sharpness (SAM-ON Eq. 6, Appendix B.10).

The measure of Andriushchenko et al. (2023), "A modern look at the relationship between
sharpness and generalization", used by SAM-ON (Section 5.2, Tables 6, 18, 19):

    s = mean over batches S of size m of [ max_{||T^-1 delta||_p <= rho} L_S(w + delta) - L_S(w) ]

on the first ``n`` training examples, without augmentation, with ``T = |w| + eta`` (adaptive;
``eta = 0`` in SAM-ON) or ``T = 1``, ``p`` in {2, inf}, BatchNorm in eval mode (running
statistics), optionally with logit normalization. Defaults follow Appendix B.10: m=128, n=1024
(SAM-ON used n=2048), 20 Auto-PGD steps, all parameters perturbed (BatchNorm running
statistics are buffers, not perturbed).

Three kinds:

* ``"worst"``: the inner max by weight-space Auto-PGD (:mod:`landscape.analyses.apgd`), one
  forward+backward per step, started at ``delta = 0`` (plus optional random restarts);
* ``"one-step"``: the SAM ascent step at the full radius, ``rho * T * sign(g)`` (l-inf) or
  ``rho * T^2 g / ||T g||`` (l2), i.e. the perturbation an (A)SAM step uses (SAM-ON Table 6,
  "1-step"); it can be negative, unlike the worst case;
* ``"average"``: ``E_delta L_S(w + delta) - L_S(w)`` over ``samples`` draws per batch, with
  ``delta = rho * T * z``, ``z ~ N(0, 1)`` (``distribution="gaussian"``: **rho is a per-coordinate
  standard deviation, not a radius**, so the draws leave the ball) or ``z ~ U[-1, 1]``
  (``"uniform"``: the box ``[-rho T, rho T]``, the l-inf ball itself). The same ``z`` are used at
  every rho (common random numbers), so curves over rho are smooth.

``params`` restricts the perturbation to a parameter group (``"norm"``, ``"no-norm"``, ``"B3"``,
...): the question SAM-ON raises is whether the normalization parameters alone account for
the sharpness.

Example:
    >>> import torch
    >>> from landscape.data import get_dataset
    >>> from landscape.models import build_model
    >>> ds = get_dataset("synthetic", num_samples=64, input_shape=(8,), num_classes=3)
    >>> model = build_model("mlp", input_shape=(8,), num_classes=3, width=8, depth=1)
    >>> res = sharpness(model, ds, rho=[0.01, 0.02], m=32, n=64, steps=5)
    >>> res.sharpness.dims, res.sizes["batch"]
    (('rho', 'batch'), 2)
    >>> bool((res.sharpness_mean >= 0).all())  # delta = 0 is feasible
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from torch import nn

from landscape.analyses.apgd import apgd, lp_norm
from landscape.analyses.common import make_options, stamp
from landscape.ascent import ascent_step
from landscape.config import ConfigError, check
from landscape.objective import NonFiniteLossError, Objective, ObjectiveOptions
from landscape.progress import Progress

__all__ = ["SharpnessOptions", "sharpness"]


@dataclass(frozen=True)
class SharpnessOptions(ObjectiveOptions):
    """Options of :func:`sharpness` (same names, same defaults; ``rho`` as a tuple).

    Defaults: SAM-ON Appendix B.10 / Andriushchenko et al. (2023): worst case, adaptive l-inf,
    m=128 on n=1024 training examples, 20 Auto-PGD steps, BatchNorm in eval mode; rho=0.005 is
    the middle of SAM-ON Table 6's 20-step radii (0.003, 0.005, 0.007); 20 average-case draws
    per batch as in Andriushchenko et al.'s sweeps.

    The protocol's names are kept: ``m`` *is* the objective's batch size and ``n`` its sample
    count (the shared ``batch_size`` / ``max_samples`` are left ``None``; a value that differs
    from ``m`` / ``n`` is rejected, so there is one way to say it). A scalar ``rho`` (e.g. from
    ``--set sharpness.rho=0.01``) becomes a one-element tuple.

    Example:
        >>> SharpnessOptions.from_dict({"rho": [0.003, 0.005], "norm": "l2"}).rho
        (0.003, 0.005)
        >>> SharpnessOptions.from_dict({"rho": 0.01}).rho
        (0.01,)
        >>> SharpnessOptions(m=64, n=256).objective_kwargs()["batch_size"], SharpnessOptions(n=256).required_samples()
        (64, 256)
    """

    batch_size: int | None = None
    max_samples: int | None = None
    kind: Literal["worst", "average", "one-step"] = "worst"
    norm: Literal["linf", "l2"] = "linf"
    rho: tuple[float, ...] = (0.005,)
    adaptive: bool = True
    eta: float = 0.0
    m: int = 128
    n: int = 1024
    steps: int = 20
    restarts: int = 1
    samples: int = 20
    distribution: Literal["gaussian", "uniform"] = "gaussian"
    seed: int = 0

    def validate(self) -> None:
        rho = self.rho
        if isinstance(rho, torch.Tensor | np.ndarray):
            rho = rho.tolist()
        if isinstance(rho, int | float) and not isinstance(rho, bool):
            rho = (rho,)
        if isinstance(rho, Sequence) and not isinstance(rho, str):
            rho = tuple(float(r) if isinstance(r, int | float) and not isinstance(r, bool) else r for r in rho)
            object.__setattr__(self, "rho", rho)
        super().validate()
        check(isinstance(self.rho, tuple) and len(self.rho) > 0,
              f"SharpnessOptions.rho must be a number or a non-empty tuple of radii, got {self.rho!r}")
        for r in self.rho:
            check(isinstance(r, int | float) and not isinstance(r, bool) and math.isfinite(r) and r > 0,
                  f"SharpnessOptions.rho must hold finite numbers > 0, got {r!r}")
        check(len(set(self.rho)) == len(self.rho), f"SharpnessOptions.rho has repeated values: {self.rho}")
        for name in ("m", "n", "steps", "restarts", "samples"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                  f"SharpnessOptions.{name} must be an int >= 1, got {v!r}")
        for shared, own in (("batch_size", "m"), ("max_samples", "n")):
            v = getattr(self, shared)
            check(v is None or v == getattr(self, own),
                  f"SharpnessOptions.{shared}={v!r} conflicts with {own}={getattr(self, own)!r}: sharpness takes its "
                  f"{'batch size' if own == 'm' else 'sample count'} from {own} (SAM-ON Appendix B.10); set {own} "
                  f"and leave {shared} unset")
        check(self.n >= self.m, f"SharpnessOptions: n={self.n} must be >= m={self.m} (n examples in batches of m)")
        check(self.n % self.m == 0,
              f"SharpnessOptions: m={self.m} must divide n={self.n} so every batch has m examples "
              f"(e.g. n={self.n - self.n % self.m or self.m})")
        check(math.isfinite(self.eta) and self.eta >= 0, f"SharpnessOptions.eta must be >= 0, got {self.eta}")
        check(self.eta == 0 or self.adaptive, "SharpnessOptions.eta only applies with adaptive=True")

    def objective_kwargs(self) -> dict[str, Any]:
        """The objective's options: batches of ``m``, the first ``n`` examples."""
        return {**super().objective_kwargs(), "batch_size": self.m, "max_samples": self.n}

    def required_samples(self) -> int:
        return self.n


def _batch_seed(seed: int, batch: int) -> int:
    # Independent streams per batch (and the same stream at every rho: common random numbers).
    return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])


def sharpness(
    model: nn.Module,
    data,
    *,
    batch_size: int | None = None,
    max_samples: int | None = None,
    bn_mode: str = "eval",
    loss: str | Callable = "ce",
    logit_normalize: bool = False,
    params: str = "all",
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    micro_batch_size: int | None = None,
    tf32: bool = False,
    batch_fn: str | Callable | None = None,
    output_fn: str | Callable | None = None,
    kind: str = "worst",
    norm: str = "linf",
    rho: float | Sequence[float] = (0.005,),
    adaptive: bool = True,
    eta: float = 0.0,
    m: int = 128,
    n: int = 1024,
    steps: int = 20,
    restarts: int = 1,
    samples: int = 20,
    distribution: str = "gaussian",
    seed: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """m-sharpness of ``model`` on the first ``n`` examples of ``data`` (SAM-ON Eq. 6).

    Args:
        model: the network (never mutated or moved; runs on its device unless ``device`` says otherwise).
        data: any form of :mod:`landscape.inputs` (``Dataset``, ``DataLoader``, ``(x, y)``,
            batches), at least ``n`` examples; use the *training* set without augmentation
            (Appendix B.10).
        batch_size, max_samples: leave ``None``: sharpness's batch size is ``m`` and its
            sample count ``n`` (a different value is a ``ConfigError``).
        bn_mode: ``"eval"`` (running statistics, the protocol) or ``"train"`` (batch statistics).
        loss: ``"ce"`` (the protocol), ``"mse"``, an import path or a callable / ``nn.Module``
            ``(output, target) -> scalar mean``; sharpness is in its units.
        logit_normalize: centre logits and divide by their l2 norm before the loss.
        params: parameter group perturbed (``"all"``, ``"norm"``, ``"no-norm"``, ``"B3"``, ...);
            the other parameters (and frozen ones, ``requires_grad=False``) stay at their values.
        dtype: ``None`` (the model's; float32 for a float16/bfloat16 model), ``"float32"``/``"float64"``
            or a ``torch.dtype``.
        batch_fn, output_fn: adapters for other batch and output forms (:mod:`landscape.inputs`).
        device, micro_batch_size, tf32: where it computes (``None``: the model's device; "cpu",
            "cuda", "cuda:N" or a ``torch.device``; the model is never moved, the objective's
            copies of its parameters are), pieces of at most ``micro_batch_size`` examples per
            batch (the same function, less memory) and TF32 matmuls on CUDA (off by default);
            see :class:`~landscape.objective.Objective` and README "Analyses on a GPU".
        kind: ``"worst"`` (Auto-PGD), ``"one-step"`` (the SAM ascent step at the full radius)
            or ``"average"`` (random perturbations).
        norm: ``"linf"`` or ``"l2"``: the ball ``||T^-1 delta||_p <= rho``.
        rho: one radius or a list (the ``rho`` dimension, also for one radius, so
            ``float(res.sharpness_mean.sel(rho=r))`` works). For ``kind="average"`` with
            ``distribution="gaussian"`` it is the standard deviation of ``T^-1 delta`` per
            coordinate.
        adaptive: ``T = |w| + eta`` (elementwise adaptive, as ASAM) instead of ``T = 1``.
        eta: offset of the adaptive scale (``0`` in SAM-ON; zero weights are then frozen).
        m: batch size of m-sharpness (128); ``n`` must be a multiple of it.
        n: examples used, the first ``n`` of ``data`` in order (1024; SAM-ON used 2048).
        steps: Auto-PGD iterations for ``"worst"`` (20).
        restarts: Auto-PGD runs per batch; the first starts at ``delta = 0``, the others at
            random points of the ball (seeded).
        samples: draws per batch for ``"average"`` (20).
        distribution: ``"gaussian"`` or ``"uniform"`` for ``"average"``.
        seed: seeds random restarts and average-case draws (never the global RNG).
        progress: a progress bar on a terminal or in a notebook, log lines otherwise;
            ``False``: silent.

    Returns:
        A Dataset with dims ``rho`` and ``batch`` (and ``iteration`` for ``"worst"``):
        ``sharpness`` per batch, ``sharpness_mean`` and its standard error ``sharpness_sem``,
        ``loss_clean``/``error_clean`` (per batch), ``loss_perturbed``/``error_perturbed``,
        ``constraint_norm`` ``||T^-1 delta||_p`` (over coordinates with ``T > 0``; for
        ``"average"`` the mean over draws), and ``grad_calls``/``forward_calls`` per rho and batch
        (the clean point's in ``clean_grad_calls``/``clean_forward_calls``). ``"worst"`` adds
        ``loss_history`` (best perturbed loss after each Auto-PGD call) and ``num_halvings``.
        The error variables exist only for class-index targets. The options are in the
        ``config_json`` attribute.

    Raises:
        ConfigError: bad options (rho <= 0, n < m, m not dividing n, unknown kind or norm, ...)
            or fewer than ``n`` examples in ``data``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> res = sharpness(model, (x, y), kind="one-step", rho=0.05, m=16, n=32, params="norm", progress=False)
        >>> float(res.sharpness_mean.sel(rho=0.05)) == float(res.sharpness.mean("batch").sel(rho=0.05))
        True
    """
    opts, objects = make_options(SharpnessOptions, locals())
    obj = Objective.from_options(model, data, opts, **objects)
    if obj.num_samples < opts.n:
        raise ConfigError(
            f"sharpness: n={opts.n} examples requested but data holds only {obj.num_samples}; "
            f"lower n (a multiple of m={opts.m})"
        )
    with Progress(obj.num_batches * len(opts.rho), f"sharpness {opts.kind}", enabled=progress) as bar:
        return stamp(_run(obj, opts, bar), "sharpness", opts, obj)


def _calls(obj: Objective) -> tuple[int, int]:
    return obj.calls["grad"], obj.calls["loss"] + obj.calls["logits"]


def _run(obj: Objective, opts: SharpnessOptions, bar: Progress) -> xr.Dataset:
    theta0 = obj.theta0
    dev = theta0.device
    T = theta0.abs() + opts.eta if opts.adaptive else torch.ones_like(theta0)
    free = T > 0
    pnorm = opts.norm
    R, B = len(opts.rho), obj.num_batches
    shp = (R, B)
    sharp = np.zeros(shp)
    loss_pert = np.zeros(shp)
    err_pert = np.zeros(shp)
    cnorm = np.zeros(shp)
    grad_calls = np.zeros(shp, dtype=np.int64)
    fwd_calls = np.zeros(shp, dtype=np.int64)
    n_iter = opts.restarts * (opts.steps + 1)
    history = np.full((R, B, n_iter), np.nan)
    halvings = np.zeros(shp, dtype=np.int64)
    loss_clean = np.zeros(B)
    err_clean = np.zeros(B)
    clean_grad = np.zeros(B, dtype=np.int64)
    clean_fwd = np.zeros(B, dtype=np.int64)
    errors = obj.class_targets

    with torch.no_grad():
        for b in range(B):
            c0 = _calls(obj)
            if opts.kind == "average":
                l0, e0 = obj.loss_and_error(theta0, b)
                g0 = None
            else:
                l0, g0 = obj.loss_and_grad(theta0, b)
                e0 = obj.error(theta0, b) if errors else None
            loss_clean[b], err_clean[b] = float(l0), _float(e0)
            c1 = _calls(obj)
            clean_grad[b], clean_fwd[b] = c1[0] - c0[0], c1[1] - c0[1]
            if not math.isfinite(loss_clean[b]):
                raise NonFiniteLossError(
                    f"sharpness: the clean loss of batch {b} is {loss_clean[b]}; check the checkpoint and the data"
                )
            gen = torch.Generator(device=dev)
            for r, rho in enumerate(opts.rho):
                gen.manual_seed(_batch_seed(opts.seed, b))
                c0 = _calls(obj)
                if opts.kind == "worst":
                    res = apgd(
                        lambda d, b=b: obj.loss_and_grad(theta0 + d, b), T, rho=rho, norm=pnorm,
                        steps=opts.steps, restarts=opts.restarts, generator=gen, init=(l0, g0),
                    )
                    lp = res.value
                    ep = _float(obj.error(theta0 + res.delta, b)) if errors else math.nan
                    cn = res.constraint_norm
                    history[r, b] = res.history.numpy()
                    halvings[r, b] = res.num_halvings
                elif opts.kind == "one-step":
                    delta = ascent_step([g0], [T], rho=rho, norm=pnorm)[0]
                    lpt, ept = obj.loss_and_error(theta0 + delta, b)
                    lp, ep = float(lpt), _float(ept)
                    cn = float(lp_norm(torch.where(free, delta / torch.where(free, T, 1), 0), pnorm))
                else:
                    lsum = torch.zeros((), dtype=torch.float64, device=dev)
                    esum = torch.zeros((), dtype=torch.float64, device=dev)
                    nsum = torch.zeros((), dtype=torch.float64, device=dev)
                    for _ in range(opts.samples):
                        z = _draw(theta0, gen, opts.distribution) * free
                        lpt, ept = obj.loss_and_error(theta0 + rho * T * z, b)
                        lsum += lpt
                        esum += ept if ept is not None else math.nan
                        nsum += rho * lp_norm(z, pnorm).to(torch.float64)
                    lp, ep, cn = (float(t) / opts.samples for t in (lsum, esum, nsum))
                c1 = _calls(obj)
                grad_calls[r, b], fwd_calls[r, b] = c1[0] - c0[0], c1[1] - c0[1]
                loss_pert[r, b], err_pert[r, b], cnorm[r, b] = lp, ep, cn
                sharp[r, b] = lp - loss_clean[b]
                bar.update(1, postfix=f"batch {b + 1}/{B} rho={rho:g}")

    return _dataset(opts, obj, T, sharp, loss_clean, err_clean, loss_pert, err_pert, cnorm,
                    grad_calls, fwd_calls, clean_grad, clean_fwd, history, halvings)


def _float(t: torch.Tensor | None) -> float:
    return math.nan if t is None else float(t)


def _draw(like: torch.Tensor, gen: torch.Generator, distribution: str) -> torch.Tensor:
    if distribution == "gaussian":
        return torch.randn(like.shape, generator=gen, device=like.device, dtype=like.dtype)
    return 2 * torch.rand(like.shape, generator=gen, device=like.device, dtype=like.dtype) - 1


def _dataset(opts, obj, T, sharp, loss_clean, err_clean, loss_pert, err_pert, cnorm,
             grad_calls, fwd_calls, clean_grad, clean_fwd, history, halvings) -> xr.Dataset:
    B = sharp.shape[1]
    mean = sharp.mean(1)
    sem = sharp.std(1, ddof=1) / math.sqrt(B) if B > 1 else np.full(len(opts.rho), np.nan)
    what = {"worst": "worst-case", "one-step": "one-step", "average": "average-case"}[opts.kind]
    ball = f"||T^-1 delta||_{'inf' if opts.norm == 'linf' else '2'}"
    rd, rbd = ("rho",), ("rho", "batch")
    units = obj.loss_spec.units
    lname = "cross-entropy" if obj.loss_spec.spec == "ce" else f"loss {obj.loss_spec.spec}"

    def var(dims, values, long_name, units="1", **extra):
        return xr.Variable(dims, values, {"long_name": long_name, "units": units, **extra})

    data_vars = {
        "sharpness": var(rbd, sharp, f"{what} m-sharpness per batch, L(w+delta) - L(w)", units),
        "sharpness_mean": var(rd, mean, f"{what} m-sharpness, mean over batches", units),
        "sharpness_sem": var(rd, sem, "standard error of the mean m-sharpness over batches", units),
        "loss_clean": var(("batch",), loss_clean, f"{lname} at w", units),
        "error_clean": var(("batch",), err_clean, "misclassification rate at w"),
        "loss_perturbed": var(rbd, loss_pert, f"{lname} at w+delta"
                              + (" (mean over draws)" if opts.kind == "average" else ""), units),
        "error_perturbed": var(rbd, err_pert, "misclassification rate at w+delta"
                               + (" (mean over draws)" if opts.kind == "average" else "")),
        "constraint_norm": var(rbd, cnorm, f"achieved constraint norm {ball}"
                               + (" (mean over draws)" if opts.kind == "average" else "")),
        "grad_calls": var(rbd, grad_calls, "batch forward+backward passes for this rho", "count"),
        "forward_calls": var(rbd, fwd_calls, "batch forward-only passes for this rho", "count"),
        "clean_grad_calls": var(("batch",), clean_grad, "forward+backward passes at w (shared by all rho)", "count"),
        "clean_forward_calls": var(("batch",), clean_fwd, "forward-only passes at w (shared by all rho)", "count"),
    }
    if not obj.class_targets:  # no classification error for regression targets
        del data_vars["error_clean"], data_vars["error_perturbed"]
    if opts.kind == "worst":
        data_vars["loss_history"] = var(
            ("rho", "batch", "iteration"), history,
            f"best perturbed {lname} after each Auto-PGD evaluation (restarts concatenated)", units)
        data_vars["num_halvings"] = var(rbd, halvings, "Auto-PGD step-size halvings", "count")
    coords = {
        "rho": ("rho", np.asarray(opts.rho, dtype=float),
                {"long_name": "perturbation radius" if not (opts.kind == "average" and opts.distribution == "gaussian")
                 else "perturbation standard deviation per coordinate (in units of T)", "units": "1"}),
        "batch": ("batch", np.arange(B), {"long_name": "batch index (first n examples in order)", "units": "1"}),
    }
    if opts.kind == "worst":
        coords["iteration"] = ("iteration", np.arange(history.shape[2]),
                               {"long_name": "Auto-PGD evaluation index", "units": "1"})
    attrs = {
        "kind": opts.kind,
        "norm": opts.norm,
        "adaptive": int(opts.adaptive),
        "num_frozen_parameters": int((T == 0).sum()),
        "parameter_names": json.dumps(obj.names),
        "batch_size": int(opts.m),
        "definition": "SAM-ON Eq. 6 / Andriushchenko et al. (2023): mean over batches of "
                      f"L_S(w+delta) - L_S(w), {ball} <= rho, T = "
                      + (f"|w| + {opts.eta}" if opts.adaptive else "1"),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)

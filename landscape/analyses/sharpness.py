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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from landscape.analyses.apgd import apgd, lp_norm
from landscape.config import ConfigError, Options, check
from landscape.objective import NonFiniteLossError, Objective

__all__ = ["SharpnessOptions", "sharpness"]


@dataclass(frozen=True)
class SharpnessOptions(Options):
    """Options of :func:`sharpness` (same names, same defaults; ``rho`` as a tuple).

    Defaults: SAM-ON Appendix B.10 / Andriushchenko et al. (2023): worst case, adaptive l-inf,
    m=128 on n=1024 training examples, 20 Auto-PGD steps, BatchNorm in eval mode; rho=0.005 is
    the middle of SAM-ON Table 6's 20-step radii (0.003, 0.005, 0.007); 20 average-case draws
    per batch as in Andriushchenko et al.'s sweeps.

    Example:
        >>> SharpnessOptions.from_dict({"rho": [0.003, 0.005], "norm": "l2"}).rho
        (0.003, 0.005)
    """

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
    logit_normalize: bool = False
    params: str = "all"
    bn_mode: Literal["eval", "train"] = "eval"
    seed: int = 0
    dtype: str | None = None

    def validate(self) -> None:
        check(isinstance(self.rho, tuple) and len(self.rho) > 0,
              f"SharpnessOptions.rho must be a non-empty tuple of radii, got {self.rho!r}")
        for r in self.rho:
            check(isinstance(r, int | float) and not isinstance(r, bool) and math.isfinite(r) and r > 0,
                  f"SharpnessOptions.rho must hold finite numbers > 0, got {r!r}")
        check(len(set(self.rho)) == len(self.rho), f"SharpnessOptions.rho has repeated values: {self.rho}")
        for name in ("m", "n", "steps", "restarts", "samples"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                  f"SharpnessOptions.{name} must be an int >= 1, got {v!r}")
        check(self.n >= self.m, f"SharpnessOptions: n={self.n} must be >= m={self.m} (n examples in batches of m)")
        check(self.n % self.m == 0,
              f"SharpnessOptions: m={self.m} must divide n={self.n} so every batch has m examples "
              f"(e.g. n={self.n - self.n % self.m or self.m})")
        check(math.isfinite(self.eta) and self.eta >= 0, f"SharpnessOptions.eta must be >= 0, got {self.eta}")
        check(self.eta == 0 or self.adaptive, "SharpnessOptions.eta only applies with adaptive=True")
        check(isinstance(self.params, str) and bool(self.params),
              f"SharpnessOptions.params must be a parameter-group spec string, got {self.params!r}")
        check(self.dtype in (None, "float32", "float64"),
              f"SharpnessOptions.dtype={self.dtype!r} is not accepted; accepted: None, 'float32', 'float64'")


def _options(**kw) -> SharpnessOptions:
    rho = kw["rho"]
    if isinstance(rho, torch.Tensor | np.ndarray):
        rho = rho.tolist()
    if isinstance(rho, Sequence) and not isinstance(rho, str):
        rho = tuple(float(r) if isinstance(r, int | float) and not isinstance(r, bool) else r for r in rho)
    elif isinstance(rho, int | float) and not isinstance(rho, bool):
        rho = (float(rho),)
    else:
        raise ConfigError(f"sharpness: rho must be a number or a list of numbers, got {rho!r}")
    dtype = kw["dtype"]
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    return SharpnessOptions(**{**kw, "rho": rho, "dtype": dtype})


def _batch_seed(seed: int, batch: int) -> int:
    # Independent streams per batch (and the same stream at every rho: common random numbers).
    return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])


def sharpness(
    model: nn.Module,
    data,
    *,
    kind: str = "worst",
    norm: str = "linf",
    rho: float | Sequence[float] = 0.005,
    adaptive: bool = True,
    eta: float = 0.0,
    m: int = 128,
    n: int = 1024,
    steps: int = 20,
    restarts: int = 1,
    samples: int = 20,
    distribution: str = "gaussian",
    logit_normalize: bool = False,
    params: str = "all",
    bn_mode: str = "eval",
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
) -> xr.Dataset:
    """m-sharpness of ``model`` on the first ``n`` examples of ``data`` (SAM-ON Eq. 6).

    Args:
        model: the network (never mutated; runs on its own device).
        data: an ``ArrayDataset``, an ``(x, y)`` tuple or an iterable of ``(x, y)`` batches, at
            least ``n`` examples; use the *training* set without augmentation (Appendix B.10).
        kind: ``"worst"`` (Auto-PGD), ``"one-step"`` (the SAM ascent step at the full radius)
            or ``"average"`` (random perturbations).
        norm: ``"linf"`` or ``"l2"``: the ball ``||T^-1 delta||_p <= rho``.
        rho: one radius or a list (the ``rho`` dimension). For ``kind="average"`` with
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
        logit_normalize: centre logits and divide by their l2 norm before the cross-entropy.
        params: parameter group perturbed (``"all"``, ``"norm"``, ``"no-norm"``, ``"B3"``, ...);
            the other parameters stay at their values.
        bn_mode: ``"eval"`` (running statistics, the protocol) or ``"train"`` (batch statistics).
        seed: seeds random restarts and average-case draws (never the global RNG).
        dtype: ``None`` (the model's), ``"float32"`` or ``"float64"``.

    Returns:
        A Dataset with dims ``rho`` and ``batch`` (and ``iteration`` for ``"worst"``):
        ``sharpness`` per batch, ``sharpness_mean`` and its standard error ``sharpness_sem``,
        ``loss_clean``/``error_clean`` (per batch), ``loss_perturbed``/``error_perturbed``,
        ``constraint_norm`` ``||T^-1 delta||_p`` (over coordinates with ``T > 0``; for
        ``"average"`` the mean over draws), and ``grad_calls``/``forward_calls`` per rho and batch
        (the clean point's in ``clean_grad_calls``/``clean_forward_calls``). ``"worst"`` adds
        ``loss_history`` (best perturbed loss after each Auto-PGD call) and ``num_halvings``.
        The options are in the ``config_json`` attribute.

    Raises:
        ConfigError: bad options (rho <= 0, n < m, m not dividing n, unknown kind or norm, ...)
            or fewer than ``n`` examples in ``data``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> res = sharpness(model, (x, y), kind="one-step", rho=0.05, m=16, n=32, params="norm")
        >>> float(res.sharpness_mean.sel(rho=0.05)) == float(res.sharpness.mean("batch").sel(rho=0.05))
        True
    """
    opts = _options(
        kind=kind, norm=norm, rho=rho, adaptive=adaptive, eta=eta, m=m, n=n, steps=steps,
        restarts=restarts, samples=samples, distribution=distribution,
        logit_normalize=logit_normalize, params=params, bn_mode=bn_mode, seed=seed, dtype=dtype,
    )
    obj = Objective(
        model, data, batch_size=opts.m, max_samples=opts.n, params=opts.params, bn_mode=opts.bn_mode,
        logit_normalize=opts.logit_normalize, loss="ce", dtype=opts.dtype,
    )
    if obj.num_samples < opts.n:
        raise ConfigError(
            f"sharpness: n={opts.n} examples requested but data holds only {obj.num_samples}; "
            f"lower n (a multiple of m={opts.m})"
        )
    return _run(obj, opts)


def _ce_and_error(obj: Objective, theta: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and error of batch ``b`` from one forward pass (the objective's loss is ``"ce"``)."""
    z = obj.logits(theta, b)
    y = obj.batches()[b][1]
    return F.cross_entropy(z, y).to(torch.float64), (z.argmax(-1) != y).double().mean()


def _calls(obj: Objective) -> tuple[int, int]:
    return obj.calls["grad"], obj.calls["loss"] + obj.calls["logits"]


def _run(obj: Objective, opts: SharpnessOptions) -> xr.Dataset:
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

    with torch.no_grad():
        for b in range(B):
            c0 = _calls(obj)
            if opts.kind == "average":
                l0, e0 = _ce_and_error(obj, theta0, b)
                g0 = None
            else:
                l0, g0 = obj.loss_and_grad(theta0, b)
                e0 = obj.error(theta0, b)
            loss_clean[b], err_clean[b] = float(l0), float(e0)
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
                    ep = float(obj.error(theta0 + res.delta, b))
                    cn = res.constraint_norm
                    history[r, b] = res.history.numpy()
                    halvings[r, b] = res.num_halvings
                elif opts.kind == "one-step":
                    delta = _ascent_step(g0, T, rho, pnorm)
                    lpt, ept = _ce_and_error(obj, theta0 + delta, b)
                    lp, ep = float(lpt), float(ept)
                    cn = float(lp_norm(torch.where(free, delta / torch.where(free, T, 1), 0), pnorm))
                else:
                    lsum = torch.zeros((), dtype=torch.float64, device=dev)
                    esum = torch.zeros((), dtype=torch.float64, device=dev)
                    nsum = torch.zeros((), dtype=torch.float64, device=dev)
                    for _ in range(opts.samples):
                        z = _draw(theta0, gen, opts.distribution) * free
                        lpt, ept = _ce_and_error(obj, theta0 + rho * T * z, b)
                        lsum += lpt
                        esum += ept
                        nsum += rho * lp_norm(z, pnorm).to(torch.float64)
                    lp, ep, cn = (float(t) / opts.samples for t in (lsum, esum, nsum))
                c1 = _calls(obj)
                grad_calls[r, b], fwd_calls[r, b] = c1[0] - c0[0], c1[1] - c0[1]
                loss_pert[r, b], err_pert[r, b], cnorm[r, b] = lp, ep, cn
                sharp[r, b] = lp - loss_clean[b]

    return _dataset(opts, obj, T, sharp, loss_clean, err_clean, loss_pert, err_pert, cnorm,
                    grad_calls, fwd_calls, clean_grad, clean_fwd, history, halvings)


def _ascent_step(g: torch.Tensor, T: torch.Tensor, rho: float, norm: str) -> torch.Tensor:
    """The SAM / ASAM ascent step at the full radius (SAM Eq. 2; ASAM el. with T = |w| + eta)."""
    tg = torch.where(T > 0, T * g, torch.zeros_like(g))  # 0 where T = 0, even if g is not finite
    if norm == "linf":
        return rho * T * torch.sign(tg)
    nrm = torch.linalg.vector_norm(tg)
    if float(nrm) == 0.0:
        return torch.zeros_like(g)
    return rho * T * tg / nrm


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

    def var(dims, values, long_name, units="1", **extra):
        return xr.Variable(dims, values, {"long_name": long_name, "units": units, **extra})

    data_vars = {
        "sharpness": var(rbd, sharp, f"{what} m-sharpness per batch, L(w+delta) - L(w)", "nats"),
        "sharpness_mean": var(rd, mean, f"{what} m-sharpness, mean over batches", "nats"),
        "sharpness_sem": var(rd, sem, "standard error of the mean m-sharpness over batches", "nats"),
        "loss_clean": var(("batch",), loss_clean, "cross-entropy at w", "nats"),
        "error_clean": var(("batch",), err_clean, "misclassification rate at w"),
        "loss_perturbed": var(rbd, loss_pert, "cross-entropy at w+delta"
                              + (" (mean over draws)" if opts.kind == "average" else ""), "nats"),
        "error_perturbed": var(rbd, err_pert, "misclassification rate at w+delta"
                               + (" (mean over draws)" if opts.kind == "average" else "")),
        "constraint_norm": var(rbd, cnorm, f"achieved constraint norm {ball}"
                               + (" (mean over draws)" if opts.kind == "average" else "")),
        "grad_calls": var(rbd, grad_calls, "batch forward+backward passes for this rho", "count"),
        "forward_calls": var(rbd, fwd_calls, "batch forward-only passes for this rho", "count"),
        "clean_grad_calls": var(("batch",), clean_grad, "forward+backward passes at w (shared by all rho)", "count"),
        "clean_forward_calls": var(("batch",), clean_fwd, "forward-only passes at w (shared by all rho)", "count"),
    }
    if opts.kind == "worst":
        data_vars["loss_history"] = var(
            ("rho", "batch", "iteration"), history,
            "best perturbed cross-entropy after each Auto-PGD evaluation (restarts concatenated)", "nats")
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
        "analysis": "sharpness",
        "config_json": opts.to_json(),
        "kind": opts.kind,
        "norm": opts.norm,
        "adaptive": int(opts.adaptive),
        "num_parameters": int(obj.numel),
        "num_frozen_parameters": int((T == 0).sum()),
        "parameter_names": json.dumps(obj.names),
        "num_samples": int(obj.num_samples),
        "batch_size": int(opts.m),
        "definition": "SAM-ON Eq. 6 / Andriushchenko et al. (2023): mean over batches of "
                      f"L_S(w+delta) - L_S(w), {ball} <= rho, T = "
                      + (f"|w| + {opts.eta}" if opts.adaptive else "1"),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)

"""Adversarial robustness: clean and robust accuracy under AutoAttack's attacks, per radius.

SAM-ON (Table 4 and Appendix B.4, Tables 14/15) follows Wei et al. (2023), "Sharpness-aware
minimization alone can improve adversarial robustness" (arXiv 2305.05392): SAM-trained networks
keep some accuracy under small input perturbations, and SAM-ON keeps it too. The numbers there
are robust accuracies under "the two white-box APGD attacks from AutoAttack" at a few radii
(l-inf 1/255, 2/255; l2 0.1, 0.2 on CIFAR-100). The attacks are those of Croce & Hein (2020),
"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks" (arXiv 2003.01690), run through the ``pyautoattack`` package (PyPI, imported lazily).

What runs (``attack=``):

* ``"apgd-ce"``: Auto-PGD on the cross-entropy, ``restarts`` random starts of ``steps``
  iterations (AutoAttack's standard settings: 1 restart, 100 iterations);
* ``"apgd-t"``: Auto-PGD on the targeted DLR loss, for each of the ``min(9, C - 1)`` most
  likely wrong classes in turn (``restarts`` x ``steps`` each); needs at least 4 classes;
* ``"autoattack-cheap"``: ``apgd-ce`` and then ``apgd-t`` on the examples it did not break (the
  SAM-ON protocol: AutoAttack without its black-box Square attack and FAB-T), at
  ``steps``/``restarts``: about ``(1 + min(9, C - 1)) x steps`` forward+backward passes per
  robust example instead of standard AutoAttack's roughly 3x that plus 5,000 Square queries;
* ``"autoattack"``: AutoAttack's ``version="standard"`` (``apgd-ce``, ``apgd-t``, ``fab-t``,
  ``square``) at its own settings (``steps=100``, ``restarts=1`` are required); image inputs
  ``(N, C, H, W)`` only (Square draws squares).

**Input space.** The attacks perturb inputs in [0, 1], so ``eps`` means what the papers mean
(l-inf 8/255 is 8 grey levels). Data of the zoo's standardized sets (an ``ArrayDataset`` whose
``info`` says ``normalized`` with ``mean``/``std``, as CIFAR-10/100 are loaded) are
un-standardized, ``x01 = x * std + mean``, and the standardization is applied again inside the
attacked function, ``model((x01 - mean) / std)``; other data (tensors, tuples, any
``Dataset``) are taken to be in [0, 1] already unless ``normalization=(mean, std)`` says how they
were standardized. Inputs outside [0, 1] by more than 1e-5 are an error naming the range; the
rest is clipped into [0, 1]. The round trip is exact to float32 rounding (not bit for bit:
``(x * std + mean - mean) / std`` differs from ``x`` by about one unit in the last place).

**How the model is called.** Eval mode for every module (restored afterwards), parameters and
buffers passed by ``torch.func.functional_call`` as detached tensors (copies only for
``dtype``): the model's parameters, buffers, ``requires_grad`` flags and ``.grad`` are never
touched, and the per-example decisions equal pyautoattack's on the model itself bit for bit
(measured: same time per step; autograd skips weight gradients either way). APGD attacks see each example
as a flat vector (reshaped for the model), so inputs of any shape work (pyautoattack alone turns
3-D inputs ``(N, C, L)`` into 4-D ones).

**pyautoattack's global state.** Its attacks call ``torch.manual_seed(seed)`` (and seed CUDA);
the CPU and CUDA RNG states (also CUDA's lazily queued seeds) are saved and restored around
them. Its check for dynamic defenses installs ``sys.settrace`` and then removes *any* tracer (a
debugger's, coverage's) and counts calls in a module-level dict that is never reset (after one
dynamic model every later model would be flagged): the previous tracer is restored and the
counts are zeroed for each call. Its sanity checks (randomized defense, dynamic defense, outputs
that look like probabilities, too many target classes, zero gradients, Square beating the
white-box attacks) log warnings on the ``auto-attack`` logger; they are captured (not printed),
re-emitted once each as :class:`RobustnessWarning` and recorded in the result's attributes
``autoattack_checks`` (names) and ``autoattack_warnings`` (messages), both JSON lists.

Example:
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    >>> x, y = torch.rand(16, 3, 2, 2), torch.randint(0, 5, (16,))
    >>> res = robustness(model, (x, y), eps=[0], n=16)  # eps = 0: the clean accuracy, no attack run
    >>> float(res.robust_accuracy.sel(eps=0)) == float(res.clean_accuracy)
    True
    >>> res.robust_correct.dims
    ('eps', 'example')
    >>> res = robustness(model, (x, y), eps=[0, 2 / 255, 8 / 255], n=16, steps=5)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from torch.func import functional_call

from landscape import inputs as _inputs
from landscape.analyses.common import make_options, stamp
from landscape.config import check
from landscape.memory import PeakMemory
from landscape.objective import (
    HALF_DTYPES,
    ObjectiveOptions,
    _as_dtype,
    _callable,
    _modes,
    analysis_device,
    model_device,
)
from landscape.precision import tf32_matmuls

__all__ = ["ATTACKS", "NORMS", "RobustnessOptions", "RobustnessWarning", "robustness", "standardization_of"]

#: attack option -> the pyautoattack attacks it runs, in order (each on what the previous left)
ATTACKS: dict[str, tuple[str, ...]] = {
    "apgd-ce": ("apgd-ce",),
    "apgd-t": ("apgd-t",),
    "autoattack-cheap": ("apgd-ce", "apgd-t"),
    "autoattack": ("apgd-ce", "apgd-t", "fab-t", "square"),
}
NORMS = ("Linf", "L2")
#: default radii per norm when ``eps=None``: SAM-ON Table 14 (CIFAR-100, WRN-28), plus eps = 0
DEFAULT_EPS = {"Linf": (0.0, 1 / 255, 2 / 255), "L2": (0.0, 0.1, 0.2)}
#: inputs may leave [0, 1] by this much (float rounding of an undone standardization)
RANGE_TOLERANCE = 1e-5
#: AutoAttack's standard settings (autoattack.py, version="standard")
STANDARD_STEPS, STANDARD_RESTARTS, MAX_TARGETS = 100, 1, 9
#: phrases of pyautoattack's check messages (checks.py) -> the names recorded in the result
_CHECKS = (
    ("randomized", "randomized defense"),
    ("dynamic", "dynamic defense"),
    ("output_range", "probability distribution"),
    ("zero_gradients", "zero gradient"),
    ("n_classes", "target classes"),
    ("n_classes", "not possible to use"),
    ("square", "Square Attack"),
)
_INSTALL = "pip install pyautoattack==0.2.0 (it declares no dependencies, so torch stays as it is)"


class RobustnessWarning(UserWarning):
    """One of AutoAttack's own sanity checks fired (the message says which and why)."""


def _floats(v: Any) -> Any:
    if isinstance(v, Tensor | np.ndarray):
        v = v.tolist()
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (float(v),)
    if isinstance(v, Sequence) and not isinstance(v, str):
        return tuple(float(e) if isinstance(e, int | float) and not isinstance(e, bool) else e for e in v)
    return v


@dataclass(frozen=True)
class RobustnessOptions(ObjectiveOptions):
    """Options of :func:`robustness` (same names, same defaults).

    ``n`` is the sample count (the first ``n`` examples; the shared ``max_samples`` stays
    ``None`` or equals ``n``); ``batch_size`` the attack's batch size. Of the other shared
    options, ``dtype``, ``batch_fn`` and ``output_fn`` apply; ``bn_mode`` must be ``"eval"``,
    ``logit_normalize`` ``False`` and ``params`` ``"all"`` (the attacks perturb inputs, not
    weights); ``loss`` is accepted so one ``--loss`` can serve a whole batch run, and not used
    (the attacks maximize their own losses: cross-entropy, targeted DLR). ``eps=None``: the
    radii of SAM-ON Table 14 for ``norm`` (:data:`DEFAULT_EPS`). ``norm`` is matched without
    case (``"linf"`` is ``"Linf"``). ``normalization=(mean, std)``: per-channel (or single)
    values the data were standardized with.

    Example:
        >>> RobustnessOptions.from_dict({"eps": 0.01, "norm": "linf"}).eps, RobustnessOptions(norm="l2").norm
        ((0.01,), 'L2')
        >>> RobustnessOptions(n=512).required_samples()
        512
    """

    batch_size: int | None = 256
    max_samples: int | None = None
    norm: Literal["Linf", "L2"] = "Linf"
    eps: tuple[float, ...] | None = None
    attack: Literal["apgd-ce", "apgd-t", "autoattack", "autoattack-cheap"] = "apgd-ce"
    n: int = 1000
    steps: int = 100
    restarts: int = 1
    seed: int = 0
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def _normalize(self) -> None:
        if isinstance(self.norm, str):
            canon = {k.lower(): k for k in NORMS}.get(self.norm.lower())
            if canon is not None:
                object.__setattr__(self, "norm", canon)
        if self.eps is not None:
            object.__setattr__(self, "eps", _floats(self.eps))
        if self.normalization is not None:
            norm = self.normalization
            if isinstance(norm, Sequence) and not isinstance(norm, str) and len(norm) == 2:
                object.__setattr__(self, "normalization", (_floats(norm[0]), _floats(norm[1])))

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        for field in ("n", "steps", "restarts"):
            v = getattr(self, field)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name}.{field} must be an int >= 1, got {v!r}")
        check(self.max_samples is None or self.max_samples == self.n,
              f"{name}.max_samples={self.max_samples!r} conflicts with n={self.n!r}: robustness takes its sample "
              "count from n; set n and leave max_samples unset")
        check(self.bn_mode == "eval", f"{name}.bn_mode={self.bn_mode!r} is not accepted: attacks run in eval mode "
              "(running statistics), as AutoAttack evaluates; accepted: 'eval'")
        check(not self.logit_normalize, f"{name}.logit_normalize=True is not accepted: the attacks maximize their own "
              "losses on the raw outputs; accepted: False")
        check(self.params == "all", f"{name}.params={self.params!r} is not accepted: the attacks perturb the inputs, "
              "not a parameter group; accepted: 'all'")
        check(self.micro_batch_size is None, f"{name}.micro_batch_size={self.micro_batch_size!r} does not apply: "
              "each attack batch is batch_size examples; lower batch_size instead")
        if self.eps is not None:
            check(len(self.eps) > 0, f"{name}.eps must hold at least one radius (or be None for the defaults)")
            for e in self.eps:
                check(isinstance(e, float) and math.isfinite(e) and e >= 0,
                      f"{name}.eps must hold finite radii >= 0 (0 = clean accuracy), got {e!r}")
            check(len(set(self.eps)) == len(self.eps), f"{name}.eps has repeated values: {self.eps}")
        if self.attack == "autoattack":
            check(self.steps == STANDARD_STEPS and self.restarts == STANDARD_RESTARTS,
                  f"{name}: attack='autoattack' is AutoAttack's standard evaluation (steps={STANDARD_STEPS}, "
                  f"restarts={STANDARD_RESTARTS}); got steps={self.steps}, restarts={self.restarts}. For fewer "
                  "iterations use attack='autoattack-cheap', 'apgd-ce' or 'apgd-t'")
        if self.normalization is not None:
            mean, std = self.normalization
            check(len(mean) >= 1 and len(std) >= 1 and (len(mean) == len(std) or 1 in (len(mean), len(std))),
                  f"{name}.normalization must be (mean, std) with one value or one per channel each, got "
                  f"{self.normalization!r}")
            check(all(math.isfinite(v) for v in mean) and all(math.isfinite(s) and s > 0 for s in std),
                  f"{name}.normalization: mean must be finite and std finite and > 0, got {self.normalization!r}")

    def radii(self) -> tuple[float, ...]:
        """``eps``, or the defaults of :data:`DEFAULT_EPS` for ``norm``."""
        return self.eps if self.eps is not None else DEFAULT_EPS[self.norm]

    def objective_kwargs(self) -> dict[str, Any]:
        return {**super().objective_kwargs(), "max_samples": self.n}

    def required_samples(self) -> int:
        return self.n


# ------------------------------------------------------------------ pieces


def _pyautoattack():
    try:
        import pyautoattack
        from pyautoattack import autopgd_base, checks
    except ImportError as e:
        raise ImportError(
            f"landscape.robustness runs AutoAttack's attacks through the pyautoattack package, which is not "
            f"importable here ({e}); install it: {_INSTALL}"
        ) from None
    return pyautoattack, autopgd_base, checks


def standardization_of(data) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The ``(mean, std)`` a zoo data set was standardized with (CIFAR-10/100 as loaded by
    :func:`landscape.data.get_dataset`), looking through a ``DataLoader`` or ``Subset``; ``None``
    for anything else (taken to be in [0, 1]).

    Example:
        >>> import torch
        >>> from landscape.data import ArrayDataset
        >>> ds = ArrayDataset(torch.zeros(2, 3, 1, 1), torch.zeros(2), 10, info={"normalized": True,
        ...                   "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
        >>> standardization_of(torch.utils.data.DataLoader(ds))
        ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    """
    from landscape.data.base import ArrayDataset

    for _ in range(4):  # DataLoader -> Subset -> ArrayDataset at most
        if isinstance(data, ArrayDataset):
            info = data.info or {}
            if info.get("normalized") and "mean" in info and "std" in info:
                return _floats(info["mean"]), _floats(info["std"])
            return None
        data = getattr(data, "dataset", None)
        if data is None:
            return None
    return None


def _stats(values: tuple[float, ...], like: Tensor) -> Tensor:
    """Per-channel values as a tensor broadcasting over ``(N, C, ...)`` inputs."""
    t = torch.tensor(values, dtype=like.dtype, device=like.device)
    if t.numel() == 1:
        return t.reshape([1] * like.ndim)
    if like.ndim < 2 or like.shape[1] != t.numel():
        raise ValueError(
            f"robustness: normalization has {t.numel()} values per channel but the inputs have shape "
            f"{tuple(like.shape)} (channels are dimension 1); give one value or one per channel"
        )
    return t.reshape(1, -1, *([1] * (like.ndim - 2)))


class _Attacked:
    """What the attacks see: ``x01`` (flat or in the data's shape, in [0, 1]) -> logits.

    Standardizes (``(x01 - mean) / std``, in the inputs' float dtype, as the data modules do),
    casts to the model's dtype, and calls the model with detached parameters and buffers through
    ``functional_call`` (the model object is never changed).
    """

    def __init__(self, model: nn.Module, shape: tuple[int, ...], mean: Tensor | None, std: Tensor | None,
                 dtype: torch.dtype | None, output_fn: Callable | None, device: torch.device | None = None) -> None:
        device = model_device(model) if device is None else device
        self.model, self.shape, self.mean, self.std, self.output_fn = model, shape, mean, std, output_fn
        floats = [t.dtype for t in model.parameters() if t.is_floating_point()]
        if dtype is None and any(f in HALF_DTYPES for f in floats):
            dtype = torch.float32  # as the objective: half-precision models are analysed in float32
        self.dtype = dtype or (floats[0] if floats else None)

        def detached(t: Tensor) -> Tensor:
            # On the analysis' device (a copy only when the model lives elsewhere or is cast).
            t = t.detach()
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)

        self.state = {n: detached(t) for n, t in (*model.named_parameters(), *model.named_buffers())}
        self.calls: Counter = Counter()

    def standardized(self, x01: Tensor) -> Tensor:
        x = x01.reshape(x01.shape[0], *self.shape)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.to(self.dtype) if self.dtype is not None else x

    def __call__(self, x01: Tensor) -> Tensor:
        grad = torch.is_grad_enabled() and x01.requires_grad
        self.calls["grad" if grad else "logits"] += 1
        out = functional_call(self.model, self.state, (self.standardized(x01),))
        return _inputs.model_output(out, self.output_fn)


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Restore torch's CPU and CUDA RNG states (pyautoattack calls ``torch.manual_seed`` and
    ``torch.cuda.manual_seed``; before CUDA is initialized the latter queues the seed for the
    next initialization, so the queue is kept too)."""
    cpu = torch.get_rng_state()
    cuda_on = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda = torch.cuda.get_rng_state_all() if cuda_on else None
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)
    queued = copy.copy(vars(tracker)) if tracker is not None else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if queued is not None:
            vars(tracker).clear()
            vars(tracker).update(queued)


@contextlib.contextmanager
def _checks_captured(checks_module) -> Iterator[list[str]]:
    """pyautoattack's check messages (its ``auto-attack`` logger) into a list, not onto stderr;
    its tracer and call counters left as they were."""
    logger = logging.getLogger("auto-attack")
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    saved = (logger.propagate, logger.level, list(logger.handlers))
    tracer = sys.gettrace()
    counts = dict(checks_module.funcs)
    checks_module.funcs.update(dict.fromkeys(checks_module.funcs, 0))
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.WARNING)
    try:
        yield messages
    finally:
        logger.propagate, logger.handlers = saved[0], saved[2]
        logger.setLevel(saved[1])
        checks_module.funcs.update(counts)
        sys.settrace(tracer)


def _check_names(messages: Sequence[str]) -> list[str]:
    names: list[str] = []
    for msg in messages:
        for name, phrase in _CHECKS:
            if phrase in msg and name not in names:
                names.append(name)
    return names


def _build_attack(aa_module, apgd_module, f: _Attacked, opts: RobustnessOptions, eps: float, device, classes: int):
    """An ``AutoAttack`` for one radius, set as :func:`robustness` documents."""
    targets = min(MAX_TARGETS, classes - 1)
    if opts.attack == "autoattack":
        aa = aa_module.AutoAttack(f, device=device, eps=eps, norm=opts.norm, seed=opts.seed, version="standard")
        aa.apgd_targeted.n_target_classes = targets
        aa.fab.n_target_classes = targets
        return aa
    aa = aa_module.AutoAttack(f, attacks=list(ATTACKS[opts.attack]), device=device, eps=eps, norm=opts.norm,
                              seed=opts.seed, version="custom")
    # AutoAttack's constructor arguments, except iterations and restarts (its "custom" version
    # would keep 5 restarts for apgd-ce); n_iter fixes the step-size schedule at construction.
    common = dict(n_restarts=opts.restarts, n_iter=opts.steps, verbose=False, eps=eps, norm=opts.norm, eot_iter=1,
                  rho=0.75, seed=opts.seed, device=device, logger=aa.logger)
    aa.apgd = apgd_module.APGDAttack(f, **common)
    aa.apgd_targeted = apgd_module.APGDAttack_targeted(f, n_target_classes=targets, **common)
    return aa


def _perturbation_norm(delta: Tensor, norm: str) -> Tensor:
    flat = delta.reshape(delta.shape[0], -1).double()
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)




# ------------------------------------------------------------------ the analysis


def robustness(
    model: nn.Module,
    data,
    *,
    batch_size: int | None = 256,
    max_samples: int | None = None,
    bn_mode: str = "eval",
    loss: str | Callable = "ce",
    logit_normalize: bool = False,
    params: str = "all",
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    micro_batch_size: int | None = None,
    tf32: bool = False,
    batch_fn: str | Callable | None = None,
    output_fn: str | Callable | None = None,
    norm: str = "Linf",
    eps: float | Sequence[float] | None = None,
    attack: str = "apgd-ce",
    n: int = 1000,
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> xr.Dataset:
    """Clean and robust accuracy of a classifier on the first ``n`` examples, per radius.

    Args:
        model: a classifier returning logits ``(N, C)`` (or any output ``output_fn`` maps to
            them); never changed (see the module docstring). Runs on its device unless ``device`` says otherwise.
        data: any form of :mod:`landscape.inputs` with one input tensor per example and class
            targets; at least ``n`` examples, in [0, 1] unless standardized (a zoo data set,
            or ``normalization``). Use the *test* split for the papers' numbers.
        batch_size: examples per attack batch (``None``: all ``n`` at once).
        max_samples: leave ``None`` (the sample count is ``n``).
        bn_mode, logit_normalize, params, loss: shared options that do not apply to attacks on
            the inputs (``"eval"``, ``False``, ``"all"``; ``loss`` is not used).
        dtype: ``None`` (the model's) or ``"float64"``/``"float32"``: the model is evaluated on
            copies of its parameters in that dtype (the attack's inputs stay float32; ``None`` with a
            float16/bfloat16 model: float32).
        device: where the attacks run (``None``: the model's device; "cpu", "cuda", "cuda:N" or a
            ``torch.device``): the model is never moved, copies of its parameters and buffers are
            made there when it lives elsewhere; the inputs are staged there once.
        tf32: allow TF32 matmuls/convolutions on CUDA (default off).
        micro_batch_size: does not apply (each forward pass is ``batch_size`` examples, no graph
            is kept); must stay ``None``.
        batch_fn, output_fn: adapters for other batch and output forms (:mod:`landscape.inputs`).
        norm: ``"Linf"`` or ``"L2"`` (case-insensitive).
        eps: one radius or several (the ``eps`` dimension), in [0, 1] pixel units; 0 gives the
            clean accuracy without attacking. ``None``: :data:`DEFAULT_EPS` for ``norm``.
        attack: ``"apgd-ce"``, ``"apgd-t"``, ``"autoattack-cheap"`` (both) or ``"autoattack"``
            (standard AutoAttack); see the module docstring for exactly what each runs.
        n: examples evaluated (the first ``n``).
        steps, restarts: iterations and random starts of each APGD run (AutoAttack: 100, 1).
        seed: seeds the attacks' random starts (the global RNG is left as it was).
        normalization: ``(mean, std)`` the inputs were standardized with (one value or one per
            channel each), for data the zoo does not describe.

    Returns:
        Dataset with ``clean_accuracy`` (scalar), ``robust_accuracy`` (eps),
        ``clean_correct`` (example), ``robust_correct`` (eps, example), ``clean_prediction``
        and ``label`` (example), ``max_perturbation`` (eps: the largest ``||x_adv - x||_p``
        reached, <= eps), coordinate ``example_index`` (the example's position in the data);
        attributes ``attack``, ``attacks_run``, ``norm``, ``steps``, ``restarts``,
        ``num_classes``, ``n_target_classes``, ``standardization`` (JSON), ``pyautoattack_version``,
        ``autoattack_checks`` and ``autoattack_warnings`` (JSON lists), costs ``calls_logits``
        (forward passes) and ``calls_grad`` (forward+backward passes).

    Raises:
        ConfigError: a bad option (negative eps, unknown attack or norm: the accepted ones are
            listed). ValueError: fewer than ``n`` examples, inputs outside [0, 1], outputs that
            are not ``(N, C)`` logits, targets that are not class indices, targeted attacks on
            fewer than 4 classes. ImportError: pyautoattack is not installed.
    """
    opts, objects = make_options(RobustnessOptions, locals())
    radii = opts.radii()
    attacking = any(e > 0 for e in radii)
    batch_fn = _callable(objects.get("batch_fn", opts.batch_fn), "batch_fn")
    output_fn = _callable(objects.get("output_fn", opts.output_fn), "output_fn")

    x, y = _inputs.collect(data, opts.n, batch_fn)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"robustness attacks one floating-point input tensor per example (images); the data gave "
                         f"inputs of type {_inputs.describe_type(x)}{'' if not isinstance(x, Tensor) else ' ' + str(x.dtype)}")
    found = int(y.shape[0])
    if found < opts.n:
        raise ValueError(f"robustness: n={opts.n} but the data hold only {found} examples; lower n to at most {found}")
    if y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"robustness needs class-index targets (an integer tensor (N,)), got {y.dtype} {tuple(y.shape)}")
    if opts.attack == "autoattack" and x.ndim != 4:
        raise ValueError(f"attack='autoattack' runs Square, which needs image inputs (N, C, H, W); the inputs have shape "
                         f"{tuple(x.shape)}; use attack='autoattack-cheap' (apgd-ce + apgd-t) for other inputs")

    device = analysis_device(opts.device, model, "RobustnessOptions.device")
    memory = PeakMemory(device)
    x = x.to(device=device, dtype=torch.float32)  # pyautoattack attacks float32 inputs
    y = y.to(device)
    own = standardization_of(data)
    if own is not None and opts.normalization is not None and tuple(map(tuple, opts.normalization)) != own:
        raise ValueError(f"robustness: normalization={opts.normalization} but the data set says it was standardized "
                         f"with mean={own[0]}, std={own[1]}; leave normalization unset for zoo data sets")
    stats = opts.normalization or own
    mean = std = None
    if stats is not None:
        mean, std = _stats(stats[0], x), _stats(stats[1], x)
        x01 = (x.double() * std.double() + mean.double()).to(x.dtype)
    else:
        x01 = x
    lo, hi = float(x01.min()), float(x01.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        where = (f"after undoing the standardization mean={stats[0]}, std={stats[1]}" if stats is not None
                 else "taken as they are (no standardization given or known)")
        raise ValueError(
            f"robustness attacks inputs in [0, 1] (eps is a distance between images with values in [0, 1]); the "
            f"inputs, {where}, range over [{lo:.4g}, {hi:.4g}]. Standardized inputs: pass normalization=(mean, std); "
            "otherwise rescale the data to [0, 1]"
        )
    x01 = x01.clamp(0.0, 1.0)
    attacked = _Attacked(model, tuple(x.shape[1:]), mean, std, _as_dtype(opts.dtype), output_fn, device)
    # APGD attacks flat vectors (any input shape works); Square needs the images themselves.
    xa = x01 if opts.attack == "autoattack" else x01.reshape(found, -1)
    bs = found if opts.batch_size is None else opts.batch_size

    messages: list[str] = []
    with _modes(model, False), _global_rng_kept(), tf32_matmuls(opts.tf32):
        with torch.no_grad():
            logits = [attacked(xa[s:s + bs]) for s in range(0, found, bs)]
        if any(z.ndim != 2 for z in logits):
            raise ValueError(f"robustness needs class logits (N, C) from the model; it returned shape {tuple(logits[0].shape)}")
        classes = int(logits[0].shape[1])
        pred = torch.cat([z.argmax(1) for z in logits])
        if int(y.min()) < 0 or int(y.max()) >= classes:
            raise ValueError(f"robustness: labels range over {int(y.min())}..{int(y.max())} but the model has {classes} outputs")
        if "apgd-t" in ATTACKS[opts.attack] and classes < 4 and attacking:
            raise ValueError(f"attack={opts.attack!r} runs apgd-t, whose targeted DLR loss needs at least 4 classes; the "
                             f"model has {classes}; use attack='apgd-ce'")
        pyaa = _pyautoattack() if attacking else None  # after the checks: they need no package
        clean = pred == y
        robust, reached = [], []
        for e in radii:
            if e == 0:
                robust.append(clean.clone())
                reached.append(0.0)
                continue
            aa_module, apgd_module, checks_module = pyaa
            with _checks_captured(checks_module) as got:
                aa = _build_attack(aa_module, apgd_module, attacked, opts, e, device, classes)
                x_adv, y_adv = aa.run_standard_evaluation(xa, y, batch_size=bs)
            messages.extend(m for m in got if m not in messages)
            robust.append((y_adv == y) & clean)
            reached.append(float(_perturbation_norm(x_adv - xa, opts.norm).max()))
    checks_fired = _check_names(messages)
    for msg in messages:
        warnings.warn(RobustnessWarning(f"AutoAttack check: {msg}"), stacklevel=2)

    robust_t = torch.stack(robust).cpu().numpy()
    clean_np = clean.cpu().numpy()
    index = np.arange(found)
    ds = xr.Dataset(
        {
            "clean_accuracy": ((), float(clean_np.mean()), {"long_name": "clean accuracy", "units": "1"}),
            "robust_accuracy": ("eps", robust_t.mean(1).astype(float), {
                "long_name": f"robust accuracy ({opts.attack})", "units": "1"}),
            "clean_correct": ("example", clean_np, {"long_name": "correctly classified without perturbation", "units": "1"}),
            "robust_correct": (("eps", "example"), robust_t, {
                "long_name": "correctly classified under the attack at eps", "units": "1"}),
            "clean_prediction": ("example", pred.cpu().numpy().astype(np.int64), {"long_name": "predicted class", "units": "1"}),
            "label": ("example", y.cpu().numpy().astype(np.int64), {"long_name": "true class", "units": "1"}),
            "max_perturbation": ("eps", np.asarray(reached, dtype=float), {
                "long_name": f"largest {opts.norm} norm of an adversarial perturbation", "units": "1"}),
        },
        coords={
            "eps": ("eps", np.asarray(radii, dtype=float), {
                "long_name": f"{opts.norm} radius eps (inputs in [0, 1])", "units": "1"}),
            "example_index": ("example", index, {"long_name": "position of the example in the data", "units": "1"}),
        },
    )
    stamp(ds, "robustness", opts, memory=memory, device=device, dtype=attacked.dtype)
    ds.attrs.update(
        attack=opts.attack,
        attacks_run=json.dumps(list(ATTACKS[opts.attack])),
        norm=opts.norm,
        steps=int(opts.steps),
        restarts=int(opts.restarts),
        seed=int(opts.seed),
        num_classes=classes,
        n_target_classes=min(MAX_TARGETS, classes - 1),
        standardization=json.dumps(None if stats is None else {
            "mean": list(stats[0]), "std": list(stats[1]), "source": "data set" if own is not None else "option"}),
        pyautoattack_version=str(getattr(pyaa[0], "__version__", "")) if pyaa is not None else "",
        autoattack_checks=json.dumps(checks_fired),
        autoattack_warnings=json.dumps(messages),
        num_parameters=int(sum(p.numel() for p in model.parameters())),
        num_samples=found,
        num_batches=math.ceil(found / bs),
        calls_loss=0,
        calls_hvp=0,
        calls_logits=int(attacked.calls["logits"]),
        calls_grad=int(attacked.calls["grad"]),
    )
    return ds

"""Feature rank: how many principal directions carry the features of a layer (SAM -> low rank).

Andriushchenko, Bahri, Mobahi and Flammarion (2023), "Sharpness-aware minimization leads to
low-rank features" (NeurIPS 2023, arXiv 2305.16292; code tml-epfl/sam-low-rank-features), find
that SAM lowers the rank of the features of every block; SAM-ON (Mueller et al. 2023, Table 6,
last row) and MSAM (Becker et al. 2024, Appendix A.5) report the same measure for their
optimizers. The protocol (the reference's ``eval_feature_rank.py`` / ``utils_eval.py``):

* features of the first 10,240 *non-augmented training* examples, model in eval mode, of the
  stage outputs (blocks 1-4) and of the penultimate layer (block 5, after pooling), each
  flattened to one row per example: a matrix ``X`` (``n x d``);
* each row centred by its own mean over the features
  (``phi - phi.mean(axis=1, keepdims=True)``, our ``centering="sample"``);
* its singular values ``s`` (descending) and the rank
  ``np.sum(np.cumsum(s**2) <= np.sum(s**2) * 0.99) + 1``: the number of leading components
  whose cumulative ``s^2`` stays within 99 % of the total, plus one.

The rank expression is applied verbatim to our singular values, so its edges are the
reference's too: with ``threshold=1`` every component whose cumulative sum does not exceed the
total in floating point is counted, so the rank is typically ``min(n, d) + 1``; features that are
all zero give ``min(n, d) + 1``. The rank can never exceed ``min(n, d) + 1``, which is why it is
flagged when ``n <= d`` (the rank is then capped by the sample count, e.g. ResNet-18's layer3
with 16,384 features on 10,240 examples).

Memory: ``X`` is never centred or decomposed as a whole, and kept at most once. The Gram matrix of the smaller
side is accumulated in float64 batch by batch: ``X^T X`` (``d x d``) from each batch alone when
``d <= n``; ``X X^T`` (``n x n``) when ``d > n``, block row by block row against the rows kept so
far (one stored copy of the raw features, in their own dtype; centring is applied in float64 to
each block as it is multiplied). The singular values are the square roots of the Gram matrix's
eigenvalues (clamped at 0): ``s^2``, which the rank reads, to float64 accuracy; a singular
value below ``~1e-8 s_max`` (e.g. the exact zero that sample centring creates when ``n > d``)
comes back at that floor. ``centering="feature"`` (PCA) subtracts the mean over examples:
exactly, by ``X^T X - s s^T / n`` (``s`` the column sums) or ``H X X^T H`` (``H = I - 11^T/n``),
with every row first shifted by the first batch's mean so that nothing cancels catastrophically.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    >>> res = feature_rank(model, (x, y), n=64)       # the input of the last Linear: 16 features
    >>> res.layer.values.tolist(), int(res.feature_dim.sel(layer="penultimate"))
    (['penultimate'], 16)
    >>> 1 <= int(res["rank"].sel(layer="penultimate")) <= 17   # res["rank"]: Dataset.rank is a method
    True
"""

from __future__ import annotations

import contextlib
import json
import warnings
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
from landscape.config import check, did_you_mean
from landscape.losses import import_object
from landscape.memory import PeakMemory
from landscape.objective import ObjectiveOptions, _modes, analysis_device, dtype_name
from landscape.precision import Precision, tf32_matmuls
from landscape.progress import Progress

__all__ = ["PENULTIMATE", "FeatureRankOptions", "RankCappedWarning", "feature_rank", "layer_names",
           "rank_from_singular_values", "resolve_layers"]

# The default layer: the input of the last nn.Linear (the reference's block 5, after pooling).
PENULTIMATE = "penultimate"
# Rows of the kept features multiplied at a time against a new batch (d > n side).
_CHUNK = 1024
# At most this many module names in an error message (the rest are counted).
_MAX_LISTED = 80


class RankCappedWarning(UserWarning):
    """``n <= feature dimension``: the feature rank is capped by the number of examples."""


@dataclass(frozen=True)
class FeatureRankOptions(ObjectiveOptions):
    """Options of :func:`feature_rank` (same names, same defaults).

    Defaults: Andriushchenko et al. (2023) / SAM-ON Table 6: the first ``n=10240`` training
    examples, 99 % of the squared singular values, each example's features centred by their mean
    (``centering="sample"``); ``layers=None`` is the penultimate layer (the input of the last
    ``nn.Linear``).

    ``n`` *is* the sample count (``None``: every example), like sharpness's ``n``: the shared
    ``max_samples`` stays ``None`` (a different value is refused). ``layers`` may be one string,
    a comma-separated string (``--set feature_rank.layers=B1,B2,B3``) or a list. The shared
    ``loss`` is accepted and not used (features do not depend on it; a run-wide ``--loss`` sets
    it for every analysis); ``logit_normalize``, ``params`` and ``output_fn`` do not apply to
    features taken by hooks and must keep their defaults; ``bn_mode="train"`` normalizes each
    batch by its own statistics (never updating the running ones).

    Example:
        >>> FeatureRankOptions.from_dict({"layers": "B1,B2", "n": 512}).layers, FeatureRankOptions(n=512).required_samples()
        (('B1', 'B2'), 512)
    """

    max_samples: int | None = None
    layers: tuple[str, ...] | None = None
    n: int | None = 10240
    threshold: float = 0.99
    centering: Literal["sample", "feature", "none"] = "sample"
    autocast: Literal["bf16"] | None = None

    def _normalize(self) -> None:
        layers = self.layers
        if isinstance(layers, str):
            layers = [s.strip() for s in layers.split(",")]  # module names never hold commas
        if isinstance(layers, list):
            layers = tuple(layers)
        if layers is not self.layers:
            object.__setattr__(self, "layers", layers)

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        check(self.n is None or (isinstance(self.n, int) and not isinstance(self.n, bool) and self.n >= 1),
              f"{name}.n must be a positive int or None (every example), got {self.n!r}")
        check(self.max_samples is None or self.max_samples == self.n,
              f"{name}.max_samples={self.max_samples!r} conflicts with n={self.n!r}: feature_rank takes its "
              "sample count from n; set n and leave max_samples unset")
        check(isinstance(self.threshold, float) and 0.0 < self.threshold <= 1.0,
              f"{name}.threshold={self.threshold!r} is not accepted; accepted: a fraction in (0, 1] of the "
              "total squared singular value (the reference uses 0.99)")
        check(self.layers is None or (len(self.layers) > 0 and all(isinstance(s, str) and s for s in self.layers)),
              f"{name}.layers={self.layers!r} is not accepted; accepted: None (the penultimate layer) or "
              "non-empty names: 'penultimate', stage names 'B1', 'B2', ... or module names of named_modules()")
        check(self.layers is None or len(set(self.layers)) == len(self.layers),
              f"{name}.layers has repeated names: {self.layers}")
        check(not self.logit_normalize,
              f"{name}.logit_normalize=True does not apply: features are taken inside the model, not from "
              "its logits; leave it False")
        check(self.params == "all",
              f"{name}.params={self.params!r} does not apply: features do not depend on a parameter group; "
              "leave it 'all'")
        check(self.autocast in (None, "bf16"),
              f"{name}.autocast={self.autocast!r} is not accepted; accepted: None (float32) or 'bf16'")
        check(self.autocast is None or self.dtype != "float64",
              f"{name}.autocast={self.autocast!r} with dtype='float64' is not accepted: bf16 autocast is measured "
              "against float32; use dtype=None or 'float32'")
        check(self.micro_batch_size is None,
              f"{name}.micro_batch_size={self.micro_batch_size!r} does not apply: feature_rank's forward passes "
              "are already batch_size examples each (no gradient graph is kept); lower batch_size instead")
        check(self.output_fn is None,
              f"{name}.output_fn={self.output_fn!r} does not apply: feature_rank never reads the model's "
              "output (features come from hooks on modules); leave it None")

    def required_samples(self) -> int | None:
        """``n``: the examples the analysis needs (the batch runner checks it against ``data.n``)."""
        return self.n


def rank_from_singular_values(s: np.ndarray, threshold: float = 0.99) -> int:
    """The reference's rank rule, verbatim: ``np.sum(np.cumsum(s**2) <= np.sum(s**2) * threshold) + 1``.

    ``s`` in descending order (tml-epfl/sam-low-rank-features, ``eval_feature_rank.py``).

    Example:
        >>> rank_from_singular_values(np.array([3.0, 2.0, 1.0, 0.0]), 0.99)   # 9 + 4 = 13 of 14
        3
        >>> rank_from_singular_values(np.array([1.0, 0.0]), 1.0)             # the reference's edge
        3
    """
    s = np.asarray(s, dtype=np.float64)
    return int(np.sum(np.cumsum(s**2) <= np.sum(s**2) * threshold) + 1)


# ------------------------------------------------------------------ layers
def _last_linear(model: nn.Module) -> str | None:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _stage_map(model: nn.Module) -> dict[str, str]:
    st = getattr(model, "stages", None)
    if not st:
        return {}
    return {f"B{i}": prefix for i, prefix in enumerate(tuple(st), start=1)}


def layer_names(model: nn.Module) -> dict[str, tuple[str, str]]:
    """Every layer name :func:`feature_rank` accepts for ``model``: ``{name: (module, "input"|"output")}``.

    ``"penultimate"`` (the input of the last ``nn.Linear`` in ``named_modules()`` order), the
    stages the model declares (``"B1"`` -> the output of module ``model.stages[0]``, see
    :func:`landscape.params.stages`), then every named module's output.

    Example:
        >>> from landscape.models import build_model
        >>> names = layer_names(build_model("mlp", input_shape=(4,), num_classes=2, width=8, depth=1))
        >>> names["penultimate"], names["B1"], names["B2"]
        (('head', 'input'), ('body', 'output'), ('head', 'output'))
    """
    modules = dict(model.named_modules())
    out: dict[str, tuple[str, str]] = {}
    last = _last_linear(model)
    if last is not None:
        out[PENULTIMATE] = (last, "input")
    for stage, prefix in _stage_map(model).items():
        if prefix in modules:
            out[stage] = (prefix, "output")
    for name in modules:
        if name and name not in out:
            out[name] = (name, "output")
    return out


def resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, tuple[str, str]]:
    """``{layer: (module name, "input"|"output")}`` for the requested layers, in order.

    Raises:
        ValueError: an unknown name (the message lists the valid ones and the nearest), or the
            default penultimate layer of a model without ``nn.Linear``.
    """
    valid = layer_names(model)
    wanted = [PENULTIMATE] if layers is None else list(layers)
    out: dict[str, tuple[str, str]] = {}
    for name in wanted:
        if name not in valid:
            raise ValueError(_unknown_layer(model, name, valid))
        out[name] = valid[name]
    return out


def _unknown_layer(model: nn.Module, name: str, valid: dict[str, tuple[str, str]]) -> str:
    kind = type(model).__name__
    if name == PENULTIMATE:
        head = f"{kind} has no nn.Linear, so there is no penultimate layer (the input of the last Linear)"
    else:
        head = f"unknown layer {name!r} for {kind}" + did_you_mean(name, valid)
    stages = [f"{s} ({m})" for s, (m, _) in valid.items() if s in _stage_map(model) and s != m]
    modules = [n for n, (m, k) in valid.items() if n == m and k == "output"]
    listed = ", ".join(modules[:_MAX_LISTED]) + (f", ... ({len(modules) - _MAX_LISTED} more)"
                                                  if len(modules) > _MAX_LISTED else "")
    parts = [f"{PENULTIMATE!r} (the input of {valid[PENULTIMATE][0]!r})"] if PENULTIMATE in valid else []
    if stages:
        parts.append("stages " + ", ".join(stages))
    parts.append("module names " + (listed or "(none)"))
    return f"{head}; accepted: " + "; ".join(parts)


# ------------------------------------------------------------------ Gram accumulation
class _Gram:
    """The float64 Gram matrix of one layer's (centred) features, accumulated batch by batch."""

    def __init__(self, n: int, centering: str):
        self.n, self.centering = n, centering
        self.d: int | None = None
        self.rows = 0
        self.shift: Tensor | None = None  # "feature": the first batch's mean, subtracted from every row
        self.colsum: Tensor | None = None
        self.kept: Tensor | None = None  # d > n: the raw features, one copy in their own dtype
        self.gram: Tensor | None = None

    def _centre(self, x: Tensor) -> Tensor:
        # One float64 temporary per block, centred in place (never the stored features).
        x = x.to(torch.float64, copy=True)
        if self.centering == "sample":
            x -= x.mean(dim=1, keepdim=True)
        elif self.centering == "feature":
            x -= self.shift
        return x

    def add(self, x: Tensor, where: str) -> None:
        b = int(x.shape[0])
        if self.d is None:
            self.d = int(x.shape[1])
            if self.centering == "feature":
                self.shift = x.to(torch.float64).mean(dim=0, keepdim=True)
            side = self.d if self.d <= self.n else self.n
            self.gram = torch.zeros(side, side, dtype=torch.float64, device=x.device)
            if self.d > self.n:
                self.kept = torch.empty(self.n, self.d, dtype=x.dtype, device=x.device)
            else:
                self.colsum = torch.zeros(self.d, dtype=torch.float64, device=x.device)
        elif int(x.shape[1]) != self.d:
            raise ValueError(f"feature_rank: {where} has {int(x.shape[1])} features in one batch and {self.d} "
                             "in an earlier one; the layer's output must have one shape for every example")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"feature_rank: {where} gave NaN or infinite features (examples {self.rows} to "
                             f"{self.rows + b - 1}); check the checkpoint and the data")
        s, e = self.rows, self.rows + b
        if e > self.n:
            raise ValueError(f"feature_rank: {where} produced more rows ({e}) than examples ({self.n})")
        if self.kept is None:  # d <= n: X^T X from this batch alone
            xc = self._centre(x)
            self.gram.addmm_(xc.T, xc)
            self.colsum += xc.sum(dim=0)
        else:  # d > n: the block row of X X^T of this batch, against every row so far
            self.kept[s:e] = x
            xc = self._centre(x)
            for a in range(0, e, _CHUNK):
                z = min(a + _CHUNK, e)
                block = xc @ self._centre(self.kept[a:z]).T
                self.gram[s:e, a:z] = block
                self.gram[a:z, s:e] = block.T
        self.rows = e

    def singular_values(self) -> np.ndarray:
        g = self.gram
        if self.centering == "feature":
            if self.kept is None:
                g = g - torch.outer(self.colsum, self.colsum) / self.n
            else:
                g = g - g.mean(dim=0, keepdim=True)
                g = g - g.mean(dim=1, keepdim=True)
            g = (g + g.T) / 2  # exactly symmetric again after the rank-one updates
        ev = torch.linalg.eigvalsh(g).flip(0).clamp_min(0.0)
        return ev.sqrt().cpu().numpy()


# ------------------------------------------------------------------ hooks and the forward pass
def _as_features(out: Any, module: str) -> Tensor:
    if isinstance(out, Tensor):
        return out
    try:
        return _inputs.model_output(out)  # tuple/list: the first element; dict/object: 'logits'
    except TypeError:
        raise TypeError(f"feature_rank: module {module!r} returned a {type(out).__name__}, not a tensor, a "
                        "tuple/list whose first element is one, or an object with 'logits'; choose a module "
                        "that returns a tensor") from None


@contextlib.contextmanager
def _hooks(model: nn.Module, targets: dict[tuple[str, str], Callable[[Tensor], None]]) -> Iterator[None]:
    """Forward (pre-)hooks that pass each target's flattened features to its sink; removed on exit."""
    modules = dict(model.named_modules())
    handles = []
    try:
        for (name, kind), sink in targets.items():
            module = modules[name]
            if kind == "input":
                # The input of the last Linear: its first positional (or keyword) argument.
                def pre(mod, args, kwargs, sink=sink, name=name):
                    x = args[0] if args else kwargs.get("input", next(iter(kwargs.values()), None))
                    sink(_as_features(x, name))
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(mod, args, out, sink=sink, name=name):
                    sink(_as_features(out, name))
                handles.append(module.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()


def _state(model: nn.Module, dtype: torch.dtype | None, bn_train: bool, device: torch.device) -> dict[str, Tensor]:
    """Parameters and buffers for ``functional_call``: copies on ``device`` when the model lives
    elsewhere, float copies in ``dtype`` when given; buffers cloned in train mode, so BatchNorm's
    running statistics of the model never move."""
    state: dict[str, Tensor] = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        cast = dtype is not None and t.is_floating_point()
        if cast or t.device != device:
            state[name] = t.detach().to(device=device, dtype=dtype if cast else t.dtype, copy=True)
    if bn_train:
        for name, b in model.named_buffers():
            if name not in state:
                state[name] = b.detach().clone()
    return state


def feature_rank(
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
    layers: str | Sequence[str] | None = None,
    n: int | None = 10240,
    threshold: float = 0.99,
    centering: str = "sample",
    autocast: str | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Singular values and rank of the features of one or more layers (Andriushchenko et al. 2023).

    One forward pass over the first ``n`` examples (in order, in batches of ``batch_size``),
    with every requested layer hooked at once, the model in eval mode under ``torch.no_grad()``.
    The model is never changed: hooks are removed and train/eval modes restored, also on errors;
    parameters and buffers are only read (``dtype`` and ``bn_mode="train"`` work on copies).

    Args:
        model: the network; runs on its device unless ``device`` says otherwise (never moved).
        data: any form of :mod:`landscape.inputs` (the training set without augmentation, as in
            the protocol); the targets are read but not used.
        batch_size: examples per forward (the result does not depend on it in eval mode).
        max_samples: leave ``None``; the sample count is ``n``.
        bn_mode: ``"eval"`` (running statistics, the protocol) or ``"train"`` (batch statistics).
        loss: accepted for the shared contract and not used (features do not depend on it).
        logit_normalize, params, output_fn: do not apply; must keep their defaults.
        dtype: ``None`` (the model's), ``"float32"``/``"float64"`` or a ``torch.dtype``: the forward
            pass runs on copies in that dtype (``None`` with a float16/bfloat16 model: float32).
            The Gram matrices are float64 in any case.
        device: where the forward passes and the Gram matrices run (``None``: the model's device;
            "cpu", "cuda", "cuda:N" or a ``torch.device``): the model is never moved, copies of its
            parameters and buffers are made there when it lives elsewhere; each batch is moved
            there once, the singular values come back to the host once at the end.
        tf32: allow TF32 matmuls/convolutions on CUDA (default off).
        micro_batch_size: does not apply (each forward pass is ``batch_size`` examples, no graph
            is kept); must stay ``None``.
        batch_fn: ``batch -> (inputs, targets)`` for batches of other forms (:mod:`landscape.inputs`).
        layers: ``None`` = ``"penultimate"``: the input of the last ``nn.Linear`` (in
            ``named_modules()`` order), taken by a forward *pre*-hook, i.e. the pooled features
            the classifier sees (the reference's block 5). Otherwise names, one or several:
            ``"penultimate"``, the model's stages ``"B1"``, ``"B2"``, ... (the output of the
            module ``landscape.params.stages(model)[i]`` names; the zoo's ResNets: ``layer1`` ...),
            or any module name of ``model.named_modules()`` (its output, by a forward hook).
            Outputs are flattened to one row per example; a tuple output gives its first element.
        n: the first ``n`` examples (``None``: all); more than the data hold is an error.
        threshold: the fraction of the total ``s^2`` in (0, 1] (reference: 0.99).
        centering: ``"sample"`` (the reference: each example's feature vector minus its mean over
            the features), ``"feature"`` (PCA: minus the mean over examples) or ``"none"``.
        autocast: ``"bf16"``: forward passes under bfloat16 autocast (CUDA and CPU; the Gram
            matrices stay float64). The first batch is also run in float32 and the result records
            ``autocast_feature_error(layer)``: ``||F_bf16 - F_fp32||_F / ||F_fp32||_F`` of that
            batch's features, the float32 difference at the checkpoint (one extra forward).
        progress: a bar (terminal, notebook) or log lines over the batches (not an option: the
            result does not depend on it).

    Returns:
        Dataset over ``layer`` (the names asked for; coordinates ``module`` and ``hook``) and
        ``component`` (0 = the largest): ``rank`` (the reference's rule,
        :func:`rank_from_singular_values`), ``singular_values`` (descending, ``min(n, d)`` per
        layer, NaN-padded), ``explained_variance_ratio`` (cumulative ``s^2`` over the total),
        ``feature_dim`` (``d``), ``capped_by_n`` (1 where ``n <= d``) and ``n_samples``. Attributes:
        ``centering``, ``threshold``, ``rank_capped_by_n`` (0/1 per layer) and the common stamp.

    Warns:
        RankCappedWarning: when ``n <= d`` for a layer (its rank is capped by ``n``).

    Raises:
        ValueError: an unknown layer (the valid ones are listed), fewer examples than ``n``, a
            module that does not run exactly once per forward pass.
        landscape.config.ConfigError: bad options (threshold outside (0, 1], unknown centering, ...).
    """
    opts, objects = make_options(FeatureRankOptions, locals())
    fn = objects.get("batch_fn")
    if fn is None and opts.batch_fn is not None:
        fn = import_object(opts.batch_fn, "batch_fn")
    targets = resolve_layers(model, opts.layers)
    run_dtype = None if opts.dtype is None else getattr(torch, dtype_name(opts.dtype))
    if run_dtype is None and any(p.dtype in (torch.float16, torch.bfloat16) for p in model.parameters()):
        run_dtype = torch.float32  # as the objective: half-precision models are analysed in float32
    device = analysis_device(opts.device, model, "FeatureRankOptions.device")
    memory = PeakMemory(device)

    x, y = _inputs.collect(data, opts.n, fn)
    total = int(y.shape[0])
    if opts.n is not None and total < opts.n:
        raise ValueError(f"feature_rank: n={opts.n} examples asked for, but the data hold only {total}; lower n "
                         f"to at most {total} (or give more data)")
    batches = _inputs.split(x, y, opts.batch_size)
    grams = {key: _Gram(total, opts.centering) for key in dict.fromkeys(targets.values())}
    seen: dict[tuple[str, str], int] = {}  # hook calls per target in the current forward pass
    current = [0]  # examples in the current batch
    # autocast: the first batch's features in float32 ("reference" pass, not accumulated) and under
    # autocast ("compare" pass, accumulated as every batch).
    capture: dict[str, dict[tuple[str, str], Tensor]] = {}
    pass_kind = [""]

    def sink_for(key):
        def sink(t: Tensor) -> None:
            seen[key] = seen.get(key, 0) + 1
            if seen[key] == 1:
                where = f"module {key[0]!r} ({key[1]})"
                if t.ndim == 0 or int(t.shape[0]) != current[0]:
                    raise ValueError(f"feature_rank: {where} gave a tensor of shape {tuple(t.shape)} for a batch of "
                                     f"{current[0]} examples; its first dimension must be the examples")
                feats = t.detach().reshape(current[0], -1)
                if pass_kind[0]:
                    # A copy: a later in-place op (ReLU(inplace=True)) may overwrite the module's output.
                    capture.setdefault(pass_kind[0], {})[key] = feats.clone()
                if pass_kind[0] != "reference":
                    grams[key].add(feats, where)
        return sink

    ctx = Precision.make(opts.autocast, device).autocast if opts.autocast is not None else contextlib.nullcontext
    errors: dict[tuple[str, str], float] = {}

    state = _state(model, run_dtype, opts.bn_mode == "train", device)
    # _modes is the one home of train/eval switching (shared with the objective), restored on exit.
    bar = Progress(len(batches), f"feature_rank n={total}", enabled=progress)
    with bar, torch.no_grad(), _modes(model, opts.bn_mode == "train"), tf32_matmuls(opts.tf32), \
            _hooks(model, {k: sink_for(k) for k in grams}):
        for b, (xb, _) in enumerate(batches):
            xb = _inputs.to_device(xb, device, run_dtype)  # each batch moved once
            current[0] = _inputs.num_examples(xb)
            args, kwargs = _inputs.as_call(xb)
            if b == 0 and opts.autocast is not None:
                pass_kind[0] = "reference"
                seen.clear()
                functional_call(model, state, args, kwargs)  # float32: the reference at the checkpoint
                pass_kind[0] = "compare"
            seen.clear()
            with ctx():
                functional_call(model, state, args, kwargs)
            if pass_kind[0]:
                for key, ref in capture.get("reference", {}).items():
                    ref = ref.to(torch.float64)
                    diff = torch.linalg.vector_norm(capture["compare"][key].to(torch.float64) - ref)
                    errors[key] = float(diff / torch.linalg.vector_norm(ref).clamp_min(1e-300))
                capture.clear()
                pass_kind[0] = ""
            for key in grams:
                count = seen.get(key, 0)
                if count != 1:
                    raise ValueError(
                        f"feature_rank: module {key[0]!r} ran {count} times in one forward pass of {type(model).__name__}"
                        + (" (it is not used by forward)" if count == 0 else
                           " (a module shared by several places has no single output per example)")
                        + "; choose a module that runs exactly once")
            bar.update()
    ds = _dataset(targets, grams, opts, total, len(batches), model)
    if opts.autocast is not None:
        ds["autocast_feature_error"] = ("layer", np.array([errors[targets[name]] for name in ds.layer.values]), {
            "long_name": f"||features under {opts.autocast} autocast - float32 features||_F / ||float32 features||_F "
                         "on the first batch, at the checkpoint", "units": "1"})
    ds.attrs["autocast"] = opts.autocast or ""
    dtype = run_dtype or next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return stamp(ds, "feature_rank", opts, memory=memory, device=device, dtype=dtype)


def _dataset(targets, grams, opts: FeatureRankOptions, total: int, num_batches: int, model: nn.Module) -> xr.Dataset:
    names = list(targets)
    svals = {key: g.singular_values() for key, g in grams.items()}
    width = max(len(s) for s in svals.values())
    L = len(names)
    sv = np.full((L, width), np.nan)
    evr = np.full((L, width), np.nan)
    rank = np.zeros(L, dtype=np.int64)
    dim = np.zeros(L, dtype=np.int64)
    for i, name in enumerate(names):
        g, s = grams[targets[name]], svals[targets[name]]
        sv[i, : len(s)] = s
        tot = float(np.sum(s**2))
        if tot > 0:
            evr[i, : len(s)] = np.cumsum(s**2) / tot
        rank[i] = rank_from_singular_values(s, opts.threshold)
        dim[i] = g.d
    capped = (total <= dim).astype(np.int8)
    if capped.any():
        which = ", ".join(f"{names[i]} (d={dim[i]})" for i in np.flatnonzero(capped))
        warnings.warn(f"feature_rank: n={total} examples <= the feature dimension of {which}: the rank of these "
                      f"layers is capped by n; use more examples (n > d) for an uncapped rank",
                      RankCappedWarning, stacklevel=3)
    one = {"units": "1"}
    ds = xr.Dataset(
        {
            "rank": ("layer", rank, {"long_name": f"feature rank: leading components within {opts.threshold} of "
                                                  "the total squared singular value, plus one", **one}),
            "singular_values": (("layer", "component"), sv,
                                {"long_name": f"singular values of the {opts.centering}-centred feature matrix "
                                              "(descending; NaN past min(n, d))", **one}),
            "explained_variance_ratio": (("layer", "component"), evr,
                                         {"long_name": "cumulative s^2 over the total s^2", **one}),
            "feature_dim": ("layer", dim, {"long_name": "features per example (flattened)", **one}),
            "capped_by_n": ("layer", capped, {"long_name": "1 where n <= feature dimension (rank capped by n)",
                                              **one}),
            "n_samples": ((), total, {"long_name": "examples in the feature matrix", **one}),
        },
        coords={
            "layer": ("layer", names, {"long_name": "layer", **one}),
            "component": ("component", np.arange(width), {"long_name": "principal component (0 = largest)", **one}),
            "module": ("layer", [targets[k][0] for k in names], {"long_name": "hooked module name", **one}),
            "hook": ("layer", [targets[k][1] for k in names], {"long_name": "module input or output", **one}),
        },
        attrs={
            "centering": opts.centering,
            "threshold": float(opts.threshold),
            "rank_capped_by_n": [int(c) for c in capped],
            "rank_capped_layers": json.dumps([names[i] for i in np.flatnonzero(capped)]),
            "rank_rule": "np.sum(np.cumsum(s**2) <= np.sum(s**2) * threshold) + 1 (tml-epfl/sam-low-rank-features)",
        },
    )
    ds.attrs.update(num_parameters=int(sum(p.numel() for p in model.parameters())), num_samples=int(total),
                    num_batches=int(num_batches), calls_loss=0, calls_grad=0, calls_hvp=0,
                    calls_logits=int(num_batches))
    return ds


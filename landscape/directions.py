"""Directions in parameter space for loss-landscape slices (Li et al. 2018).

A *direction* is a ``dict[str, Tensor]`` keyed by parameter name: the names of
:func:`landscape.params.select` for a parameter group (trainable parameters, in
``named_parameters()`` order), each tensor of its parameter's shape, detached, floating point, on
the parameter's device. Parameters outside the group are absent (they do not move); 1-D
parameters that are ignored are present as zeros.

Sources of directions, all pure functions (no disk, no printing, no global RNG; the model is never
changed):

* :func:`random_direction`: seeded Gaussian, normalized by :func:`normalize`, the one normalizer
  (Li et al., "Visualizing the loss landscape of neural nets", arXiv 1712.09913, Section 4:
  filter normalization).
* :func:`checkpoint_direction` (``b - a``) and :func:`plane` (through three checkpoints).
* :func:`momentum_direction` (optimizer buffers), :func:`gradient_direction` (through
  :class:`landscape.objective.Objective`), :func:`eigenvector_directions` (Hessian Ritz vectors).
* :func:`trajectory_pca`: the first two PCA directions of a training trajectory and every
  checkpoint's coordinates in that plane (Li et al. Section 7).
* :func:`orthogonalize`, :func:`cosine`, :func:`norm`, :func:`to_flat`, :func:`from_flat`, and
  :func:`directions_to_dataset` / :func:`directions_from_dataset` to keep directions with a
  result and evaluate the same plane again on another model or data set.

Normalizations (``normalization=``), applied to each tensor ``d`` of the direction against the
model's weight ``w`` of the same name:

* ``"filter"`` (Li et al. Section 4): every output filter of ``d`` is rescaled to the norm of the
  same filter of ``w``. A filter is a slice along dim 0 (the output channel of a convolution, also
  grouped and depthwise ones; the output row of a linear layer; a row of an embedding), except for
  ``ConvTranspose*d`` weights, found by module type, whose output channels are dim 1 of the weight
  ``(in, out/groups, *kernel)`` (the filter of output channel ``(g, j)`` is
  ``w[g*in/groups:(g+1)*in/groups, j]``). A filter of ``w`` that is zero gives a zero filter.
* ``"layer"``: every tensor rescaled to the norm of its weight tensor.
* ``"model"``: the multi-dimensional part of the direction rescaled to the norm of the group's
  multi-dimensional weights.
* ``"none"``: nothing is rescaled.

1-D (and 0-D) parameters, biases and normalization gamma/beta, follow ``one_d=``: ``"ignore"``
(zero, Li et al.'s default ``--xignore biasbn``) or ``"filter"`` (each element is a filter:
``|d_i| = |w_i|``, the sign of the drawn ``d_i`` kept; never rescaled a second time by the
layer/model rule; under ``normalization="none"`` they are kept as they are). With ``"model"`` and
``one_d="filter"`` the whole direction therefore has the norm of the whole group.

Tied weights (one parameter shared by several modules) appear once in ``named_parameters()``, so
once in a direction; their filters are those of the first module that owns them. Directions move
parameters only: BatchNorm running statistics are buffers, left to the slice's ``bn_mode`` (the
reference code's "states" directions perturb them too).

Example:
    >>> import torch.nn as nn
    >>> from landscape import directions as D
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    >>> d = D.random_direction(model, seed=0)
    >>> w = model[0].weight
    >>> bool(((d["0.weight"].flatten(1).norm(dim=1) - w.flatten(1).norm(dim=1)).abs() < 1e-6).all())
    True
    >>> float(d["0.bias"].abs().sum())       # 1-D parameters ignored
    0.0
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from landscape.params import GroupSpec, select

__all__ = [
    "NORMALIZATIONS",
    "ONE_D",
    "DirectionError",
    "Plane",
    "check_direction",
    "checkpoint_direction",
    "cosine",
    "directions_from_dataset",
    "directions_to_dataset",
    "dot",
    "eigenvector_directions",
    "from_flat",
    "gradient_direction",
    "momentum_direction",
    "norm",
    "normalize",
    "orthogonalize",
    "plane",
    "random_direction",
    "to_flat",
    "trajectory_pca",
]

NORMALIZATIONS = ("filter", "layer", "model", "none")
ONE_D = ("ignore", "filter")

Direction = dict[str, Tensor]

# Above this many matrix entries trajectory_pca works on the n x n Gram matrix instead of the
# (n x P) matrix itself (float64: 32 M entries = 256 MB).
_SVD_MAX_ENTRIES = 32_000_000


class DirectionError(ValueError):
    """A direction that does not fit a model (missing parameter, wrong shape), another
    architecture, or an unknown option value."""


@dataclass
class Plane:
    """A plane in parameter space: two directions and labelled points in its coordinates.

    The plane's origin is the centre model (checkpoint ``a`` of :func:`plane`, the centre of
    :func:`trajectory_pca`); a point ``(alpha, beta)`` stands for ``theta_centre + alpha * d1 +
    beta * d2``.

    Attributes:
        d1, d2: the two directions (``dict[str, Tensor]``).
        points: ``{label: (alpha, beta)}`` of the checkpoints that lie on (or are projected onto)
            the plane, the centre included at ``(0, 0)``.
        explained_variance: for trajectory planes, the explained variance ratio of ``d1`` and
            ``d2`` (Li et al. Section 7); ``None`` otherwise.
        cos: ``cosine(d1, d2)``.
        steps: ``{label: training step}`` where known (``-1``: unknown).
        kind: ``"plane"`` (three checkpoints) or ``"trajectory"`` (PCA).
        centre: the label of the point at the origin.
    """

    d1: Direction
    d2: Direction
    points: dict[str, tuple[float, float]]
    explained_variance: tuple[float, float] | None = None
    cos: float = 0.0
    steps: dict[str, int] = field(default_factory=dict)
    kind: str = "plane"
    centre: str | None = None

    @property
    def directions(self) -> list[Direction]:
        """``[d1, d2]``."""
        return [self.d1, self.d2]


# ---------------------------------------------------------------------------------- helpers
def _check_choice(value: str, accepted: tuple[str, ...], what: str) -> None:
    if value not in accepted:
        raise DirectionError(f"{what}={value!r} is not accepted; accepted: {', '.join(map(repr, accepted))}")


def _float(t: Tensor) -> Tensor:
    """At least float32 (norms and ratios of half-precision tensors are computed in float32)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _owner(model: nn.Module, name: str) -> nn.Module | None:
    prefix = name.rpartition(".")[0]
    try:
        return model.get_submodule(prefix) if prefix else model
    except AttributeError:
        return None


def _is_conv_transpose_weight(model: nn.Module, name: str) -> bool:
    owner = _owner(model, name)
    return isinstance(owner, nn.modules.conv._ConvTransposeNd) and name.rpartition(".")[2] == "weight"


def _filter_view(t: Tensor, conv_t_groups: int | None) -> Tensor:
    """A view of ``t`` whose filters are indexed by dim 0 and whose other dims are flattened...

    ...except for ConvTranspose weights (``conv_t_groups`` = the module's groups), where it is
    ``(groups, in/groups, out/groups, kernel)`` and a filter is ``[g, :, j, :]``.
    """
    if conv_t_groups is None:
        return t.reshape(t.shape[0], -1)
    g = conv_t_groups
    return t.reshape(g, t.shape[0] // g, t.shape[1], -1)


def _filter_norms(v: Tensor, conv_t: bool) -> Tensor:
    """Per-filter norms of a ``_filter_view``, shaped to broadcast against it."""
    if not conv_t:
        return v.norm(dim=1, keepdim=True)
    return v.pow(2).sum(dim=(1, 3), keepdim=True).sqrt()


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, 0 where ``den`` is 0 (a zero direction filter stays zero)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


def _state_of(x: Any, what: str) -> Mapping[str, Tensor]:
    """Tensors by name of a model (its parameters), a state dict, or a Checkpoint (``.model``)."""
    if isinstance(x, nn.Module):
        return dict(x.named_parameters())
    if isinstance(x, Mapping):
        from landscape.checkpoint import strip_prefixes

        return strip_prefixes(dict(x))
    model = getattr(x, "model", None)
    if isinstance(model, nn.Module):
        return dict(model.named_parameters())
    raise DirectionError(
        f"{what} is a {type(x).__name__}; accepted: an nn.Module, a state dict (name -> tensor) or a "
        "Checkpoint (with .model)"
    )


def _module_of(x: Any) -> nn.Module | None:
    if isinstance(x, nn.Module):
        return x
    model = getattr(x, "model", None)
    return model if isinstance(model, nn.Module) else None


def _step_of(x: Any) -> int | None:
    """The training step of a Checkpoint (``None`` for models and state dicts)."""
    if isinstance(x, (nn.Module, Mapping)):
        return None
    step = getattr(x, "step", None)
    return int(step) if isinstance(step, int) and not isinstance(step, bool) else None


def check_direction(direction: Mapping[str, Tensor], model: nn.Module, *, what: str = "direction") -> dict[str, nn.Parameter]:
    """Check that every tensor of ``direction`` names a parameter of ``model`` with its shape.

    Args:
        direction: ``{name: tensor}``.
        model: the network the direction is for.
        what: how the direction is called in the error message.

    Returns:
        ``{name: parameter}`` of the model for the direction's names, in the direction's order.

    Raises:
        DirectionError: naming the first parameter that the model lacks or whose shape differs
            (expected and got), or a value that is not a floating tensor.

    Example:
        >>> import torch, torch.nn as nn
        >>> check_direction({"weight": torch.zeros(2, 3)}, nn.Linear(3, 2)).keys()
        dict_keys(['weight'])
        >>> check_direction({"weight": torch.zeros(3, 2)}, nn.Linear(3, 2))
        Traceback (most recent call last):
        ...
        landscape.directions.DirectionError: direction: parameter 'weight' has shape (3, 2) but the model's (Linear) has shape (2, 3)
    """
    if not isinstance(direction, Mapping) or not direction:
        raise DirectionError(f"{what} must be a non-empty dict of parameter name -> tensor, got {type(direction).__name__}")
    params = dict(model.named_parameters())
    out: dict[str, nn.Parameter] = {}
    for name, t in direction.items():
        if name not in params:
            from landscape.config import did_you_mean

            raise DirectionError(
                f"{what}: parameter {name!r} is not a parameter of the model ({type(model).__name__})"
                + did_you_mean(name, list(params))
            )
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise DirectionError(f"{what}: {name!r} must be a floating-point tensor, got {type(t).__name__}"
                                 + (f" {t.dtype}" if isinstance(t, Tensor) else ""))
        if t.shape != params[name].shape:
            raise DirectionError(
                f"{what}: parameter {name!r} has shape {tuple(t.shape)} but the model's "
                f"({type(model).__name__}) has shape {tuple(params[name].shape)}"
            )
        out[name] = params[name]
    return out


# ------------------------------------------------------------------------------ normalize
@torch.no_grad()
def normalize(
    direction: Mapping[str, Tensor],
    model: nn.Module,
    *,
    normalization: str = "filter",
    one_d: str = "ignore",
) -> Direction:
    """Rescale a direction against the model's weights (the one normalizer; Li et al. Section 4).

    Args:
        direction: ``{name: tensor}`` over (a group of) the model's parameters.
        model: the weights ``w`` the direction is normalized against (read only).
        normalization: ``"filter"``, ``"layer"``, ``"model"`` or ``"none"`` (module docstring).
        one_d: ``"ignore"`` (1-D parameters become zeros) or ``"filter"`` (``|d_i| = |w_i|``).

    Returns:
        A new direction with the same names and order (inputs untouched), each tensor on its
        parameter's device. Per tensor the work is vectorized (one norm over dims 1..n).

    Raises:
        DirectionError: unknown option value, or a tensor that does not fit the model.

    Example:
        >>> import torch, torch.nn as nn
        >>> lin = nn.Linear(3, 2)
        >>> d = normalize({"weight": torch.ones(2, 3), "bias": torch.ones(2)}, lin, normalization="layer")
        >>> torch.allclose(d["weight"].norm(), lin.weight.norm()), float(d["bias"].abs().sum())
        (True, 0.0)
    """
    _check_choice(normalization, NORMALIZATIONS, "normalization")
    _check_choice(one_d, ONE_D, "one_d")
    params = check_direction(direction, model)
    out: Direction = {}
    multi: list[str] = []
    for name, d in direction.items():
        w = params[name].detach()
        d = d.detach().to(w.device)
        if d.ndim <= 1:
            if one_d == "ignore":
                out[name] = torch.zeros_like(d)
            elif normalization == "none":
                out[name] = d.clone()
            else:
                # Each element is a filter: |d_i| = |w_i|. sign(0) = 0 keeps a zero draw zero.
                out[name] = (torch.sign(d) * w.abs().to(d.dtype)).to(d.dtype)
            continue
        multi.append(name)
        if normalization == "filter":
            owner = _owner(model, name) if _is_conv_transpose_weight(model, name) else None
            groups = int(owner.groups) if owner is not None else None
            dv, wv = _filter_view(_float(d), groups), _filter_view(_float(w), groups)
            scale = _ratio(_filter_norms(wv, groups is not None), _filter_norms(dv, groups is not None))
            out[name] = (dv * scale).reshape(d.shape).to(d.dtype)
        elif normalization == "layer":
            out[name] = (_float(d) * _ratio(_float(w).norm(), _float(d).norm())).to(d.dtype)
        else:
            out[name] = d.clone()
    if normalization == "model" and multi:
        wn = math.sqrt(sum(float(_float(params[n].detach()).double().pow(2).sum()) for n in multi))
        dn = math.sqrt(sum(float(out[n].double().pow(2).sum()) for n in multi))
        s = wn / dn if dn > 0 else 0.0
        for n in multi:
            out[n] = (_float(out[n]) * s).to(out[n].dtype)
    return out


# ---------------------------------------------------------------------------------- random
@torch.no_grad()
def random_direction(
    model: nn.Module,
    *,
    normalization: str = "filter",
    one_d: str = "ignore",
    params: GroupSpec = "all",
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> Direction:
    """A seeded Gaussian direction over a parameter group, normalized (Li et al. Section 4).

    Every tensor of the group is drawn from ``N(0, 1)`` (Gaussian, not uniform), in
    ``select`` order, 1-D ones included, so the multi-dimensional part does not depend on
    ``one_d``; then :func:`normalize` rescales it.

    Args:
        model: the network (read only).
        normalization: ``"filter"`` (default), ``"layer"``, ``"model"`` or ``"none"``.
        one_d: ``"ignore"`` (default: 1-D parameters are zeros) or ``"filter"``.
        params: the parameter group (:mod:`landscape.params`), e.g. ``"norm"``.
        seed: seeds a fresh CPU ``torch.Generator`` (ignored when ``generator`` is given). The
            draw is made on the CPU (on the generator's device if one is given), so a seed gives
            the same direction on every device.
        generator: draw from this generator instead (it advances).

    Returns:
        ``{name: tensor}`` for the group, each tensor on its parameter's device.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        >>> list(random_direction(m, params="norm", one_d="filter"))
        ['1.weight', '1.bias']
        >>> a, b = random_direction(m, seed=1), random_direction(m, seed=1)
        >>> all(bool((a[k] == b[k]).all()) for k in a)
        True
    """
    _check_choice(normalization, NORMALIZATIONS, "normalization")
    _check_choice(one_d, ONE_D, "one_d")
    chosen = select(model, params)
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    raw: Direction = {}
    for name, p in chosen.items():
        dtype = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
        t = torch.randn(p.shape, generator=gen, dtype=dtype, device=gen.device)
        raw[name] = t.to(device=p.device, dtype=p.dtype if p.is_floating_point() else dtype)
    return normalize(raw, model, normalization=normalization, one_d=one_d)


# ------------------------------------------------------------------------------ algebra
def _pair(d1: Mapping[str, Tensor], d2: Mapping[str, Tensor], what: str) -> None:
    for name in d1.keys() & d2.keys():
        if d1[name].shape != d2[name].shape:
            raise DirectionError(
                f"{what}: parameter {name!r} has shape {tuple(d1[name].shape)} in the first direction "
                f"and {tuple(d2[name].shape)} in the second"
            )


def dot(d1: Mapping[str, Tensor], d2: Mapping[str, Tensor]) -> float:
    """Inner product ``<d1, d2>`` (float64 accumulation; absent names count as zeros).

    Example:
        >>> import torch
        >>> dot({"w": torch.ones(2, 2)}, {"w": torch.full((2, 2), 2.0), "b": torch.ones(2)})
        8.0
    """
    _pair(d1, d2, "dot")
    total = 0.0
    for name in d1.keys() & d2.keys():
        a, b = d1[name].detach(), d2[name].detach()
        total += float((a.double() * b.to(a.device).double()).sum())
    return total


def norm(direction: Mapping[str, Tensor]) -> float:
    """Euclidean norm of a direction over all its tensors (float64 accumulation).

    Example:
        >>> import torch
        >>> norm({"w": torch.full((2, 2), 3.0), "b": torch.zeros(3)})
        6.0
    """
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in direction.values()))


def cosine(d1: Mapping[str, Tensor], d2: Mapping[str, Tensor]) -> float:
    """``cos(d1, d2) = <d1, d2> / (|d1| |d2|)``; absent names count as zeros.

    Raises:
        DirectionError: if either direction is zero (the cosine is undefined) or shapes differ.

    Example:
        >>> import torch
        >>> cosine({"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([1.0, 1.0])})  # doctest: +ELLIPSIS
        0.7071...
    """
    n1, n2 = norm(d1), norm(d2)
    if n1 == 0 or n2 == 0:
        raise DirectionError(f"cosine: the {'first' if n1 == 0 else 'second'} direction is zero, so the cosine is undefined")
    return dot(d1, d2) / (n1 * n2)


def orthogonalize(d1: Mapping[str, Tensor], d2: Mapping[str, Tensor]) -> tuple[Direction, Direction]:
    """Gram-Schmidt: ``(d1, d2 - <d2, d1>/<d1, d1> d1)``, so that ``cos(d1, d2_orth) = 0``.

    ``d1`` is returned unchanged (a copy); the result has the names of ``d2`` and then those of
    ``d1`` it lacks. Apply it after normalizing (the orthogonal part is not normalized again).

    Raises:
        DirectionError: ``d1`` is zero, or shapes differ.

    Example:
        >>> import torch
        >>> a, b = orthogonalize({"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([1.0, 1.0])})
        >>> b["w"].tolist()
        [0.0, 1.0]
    """
    _pair(d1, d2, "orthogonalize")
    n11 = dot(d1, d1)
    if n11 == 0:
        raise DirectionError("orthogonalize: the first direction is zero")
    c = dot(d2, d1) / n11
    out2: Direction = {}
    for name in list(d2) + [n for n in d1 if n not in d2]:
        base = d2[name].detach() if name in d2 else torch.zeros_like(d1[name])
        if name in d1:
            base = (base.double() - c * d1[name].detach().to(base.device).double()).to(base.dtype)
        else:
            base = base.clone()
        out2[name] = base
    return {n: t.detach().clone() for n, t in d1.items()}, out2


_gram_schmidt = orthogonalize  # plane() has an argument of that name


# --------------------------------------------------------------------------------- flat
def _names_shapes(model_or_shapes: nn.Module | Mapping[str, Any], params: GroupSpec) -> dict[str, torch.Size]:
    if isinstance(model_or_shapes, nn.Module):
        return {n: p.shape for n, p in select(model_or_shapes, params).items()}
    if isinstance(model_or_shapes, Mapping):
        return {n: (v.shape if isinstance(v, Tensor) else torch.Size(v)) for n, v in model_or_shapes.items()}
    raise DirectionError(f"expected a model or a mapping name -> shape, got {type(model_or_shapes).__name__}")


def to_flat(
    direction: Mapping[str, Tensor],
    model_or_names: nn.Module | Sequence[str] | None = None,
    *,
    params: GroupSpec = "all",
) -> Tensor:
    """Concatenate a direction into one flat vector.

    Args:
        direction: ``{name: tensor}``.
        model_or_names: the order: ``None`` (the direction's), a list of names (each must be in
            the direction), or a model (the names of ``select(model, params)``; names the
            direction lacks are zeros, names outside the group are refused).
        params: the group when a model is given.

    Example:
        >>> import torch
        >>> to_flat({"a": torch.ones(2), "b": torch.zeros(1, 2)}, ["b", "a"]).tolist()
        [0.0, 0.0, 1.0, 1.0]
    """
    if isinstance(model_or_names, nn.Module):
        shapes = _names_shapes(model_or_names, params)
        extra = [n for n in direction if n not in shapes]
        if extra:
            raise DirectionError(f"to_flat: parameter {extra[0]!r} of the direction is not in group {params!r} of the model")
        check_direction(direction, model_or_names)
        ref = next(iter(direction.values()))
        parts = [direction[n].reshape(-1) if n in direction else torch.zeros(math.prod(s), dtype=ref.dtype, device=ref.device)
                 for n, s in shapes.items()]
    else:
        names = list(direction) if model_or_names is None else list(model_or_names)
        missing = [n for n in names if n not in direction]
        if missing:
            raise DirectionError(f"to_flat: the direction has no tensor for parameter {missing[0]!r}")
        parts = [direction[n].reshape(-1) for n in names]
    dtypes = {p.dtype for p in parts}
    dtype = parts[0].dtype if len(dtypes) == 1 else torch.float64
    return torch.cat([p.detach().to(dtype) for p in parts])


def from_flat(flat: Tensor, model_or_shapes: nn.Module | Mapping[str, Any], *, params: GroupSpec = "all") -> Direction:
    """Split a flat vector into a direction (``to_flat``'s inverse).

    Args:
        flat: 1-D tensor.
        model_or_shapes: a model (names, shapes, dtypes and devices of ``select(model, params)``)
            or ``{name: shape}`` (kept on ``flat``'s device and dtype).
        params: the group when a model is given.

    Raises:
        DirectionError: when the length is not the group's dimension.

    Example:
        >>> import torch
        >>> d = from_flat(torch.arange(5.0), {"w": (2, 2), "b": (1,)})
        >>> d["w"].tolist(), d["b"].tolist()
        ([[0.0, 1.0], [2.0, 3.0]], [4.0])
    """
    shapes = _names_shapes(model_or_shapes, params)
    sizes = [math.prod(s) for s in shapes.values()]
    if flat.ndim != 1 or flat.shape[0] != sum(sizes):
        raise DirectionError(
            f"from_flat: expected a flat vector of length {sum(sizes)} ({len(sizes)} tensors), got shape {tuple(flat.shape)}"
        )
    model_params = select(model_or_shapes, params) if isinstance(model_or_shapes, nn.Module) else {}
    out: Direction = {}
    for (name, shape), part in zip(shapes.items(), flat.detach().split(sizes)):
        t = part.reshape(shape)
        p = model_params.get(name)
        out[name] = t.to(device=p.device, dtype=p.dtype).clone() if p is not None else t.clone()
    return out


# ------------------------------------------------------------------------- checkpoints
def _group_names(model: nn.Module | None, params: GroupSpec) -> list[str]:
    if model is not None:
        return list(select(model, params))
    if not isinstance(params, str) and not callable(params):
        return list(params)
    raise DirectionError(
        "all checkpoints are state dicts, which do not tell parameters from buffers: pass a model (or a "
        "Checkpoint) as one of them, or the architecture as `model=`"
    )


@torch.no_grad()
def checkpoint_direction(
    a: nn.Module | Mapping[str, Tensor],
    b: nn.Module | Mapping[str, Tensor],
    *,
    params: GroupSpec = "all",
    model: nn.Module | None = None,
) -> Direction:
    """The direction from checkpoint ``a`` to checkpoint ``b``: ``b - a`` (linear interpolation
    at ``alpha = 1`` is ``b``; Goodfellow et al. 2015, Li et al. Section 3).

    Args:
        a, b: models, state dicts (``module.`` / ``_orig_mod.`` prefixes stripped) or
            Checkpoints. Only parameters are used (buffers of a state dict are ignored).
        params: the parameter group (resolved on the first model among ``model``, ``a``, ``b``).
        model: the architecture (names and group), needed only when both ``a`` and ``b`` are
            state dicts (a state dict does not tell parameters from buffers); or give ``params``
            as a list of names.

    Returns:
        ``{name: b[name] - a[name]}`` for the group, on ``a``'s devices and dtypes.

    Raises:
        DirectionError: another architecture, naming the first parameter that is missing or
            whose shape differs, with both shapes.

    Example:
        >>> import torch, torch.nn as nn
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> d = checkpoint_direction(a, b)
        >>> torch.allclose(a.weight + d["weight"], b.weight)
        True
        >>> checkpoint_direction(a, nn.Linear(3, 2))
        Traceback (most recent call last):
        ...
        landscape.directions.DirectionError: checkpoint_direction: another architecture: parameter 'weight' has shape (2, 2) in the first checkpoint and (2, 3) in the second
    """
    sa, sb = _state_of(a, "checkpoint a"), _state_of(b, "checkpoint b")
    ref = model if model is not None else (_module_of(a) or _module_of(b))
    names = _group_names(ref, params)
    out: Direction = {}
    for name in names:
        for state, which in ((sa, "first"), (sb, "second")):
            if name not in state:
                raise DirectionError(
                    f"checkpoint_direction: another architecture: parameter {name!r} is missing from the {which} checkpoint"
                )
        ta, tb = sa[name].detach(), sb[name].detach()
        if ta.shape != tb.shape:
            raise DirectionError(
                f"checkpoint_direction: another architecture: parameter {name!r} has shape {tuple(ta.shape)} in the "
                f"first checkpoint and {tuple(tb.shape)} in the second"
            )
        out[name] = tb.to(device=ta.device, dtype=ta.dtype) - ta
    return out


@torch.no_grad()
def plane(
    a: nn.Module | Mapping[str, Tensor],
    b: nn.Module | Mapping[str, Tensor],
    c: nn.Module | Mapping[str, Tensor],
    *,
    params: GroupSpec = "all",
    orthogonalize: bool = False,
    labels: Sequence[str] = ("a", "b", "c"),
    model: nn.Module | None = None,
) -> Plane:
    """The plane through three checkpoints: centre ``a``, ``d1 = b - a``, ``d2 = c - a``.

    The three checkpoints lie on the plane exactly: ``a`` at ``(0, 0)``, ``b`` at ``(1, 0)``,
    ``c`` at ``(0, 1)``; with ``orthogonalize=True`` ``d2`` becomes ``c - a - t d1`` with
    ``t = <c - a, d1> / <d1, d1>`` and ``c`` is at ``(t, 1)``.

    Args:
        a, b, c: models, state dicts or Checkpoints (as :func:`checkpoint_direction`).
        params: the parameter group.
        orthogonalize: Gram-Schmidt ``d2`` against ``d1``.
        labels: the three points' labels.
        model: the architecture when all three are state dicts (see :func:`checkpoint_direction`).

    Returns:
        A :class:`Plane` (``kind="plane"``, ``centre=labels[0]``, ``steps`` from Checkpoints'
        ``.step``, else -1).

    Example:
        >>> import torch, torch.nn as nn
        >>> a, b, c = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
        >>> p = plane(a, b, c, orthogonalize=True)
        >>> t, s = p.points["c"]
        >>> torch.allclose(a.weight + t * p.d1["weight"] + s * p.d2["weight"], c.weight), abs(p.cos) < 1e-6
        (True, True)
    """
    la, lb, lc = (str(x) for x in labels)
    if len({la, lb, lc}) != 3:
        raise DirectionError(f"plane: labels must be three distinct names, got {list(labels)}")
    ref = model if model is not None else (_module_of(a) or _module_of(b) or _module_of(c))
    d1 = checkpoint_direction(a, b, params=params, model=ref)
    d2 = checkpoint_direction(a, c, params=params, model=ref)
    n11 = dot(d1, d1)
    if n11 == 0:
        raise DirectionError(f"plane: checkpoints {la!r} and {lb!r} are identical (d1 = 0)")
    if norm(d2) == 0 or 1 - abs(cosine(d1, d2)) < 1e-12:
        raise DirectionError(f"plane: checkpoint {lc!r} lies on the line through {la!r} and {lb!r}, so the three "
                             "checkpoints span no plane")
    t = 0.0
    if orthogonalize:
        t = dot(d2, d1) / n11
        d1, d2 = _gram_schmidt(d1, d2)
    steps = {label: -1 if _step_of(x) is None else _step_of(x) for label, x in ((la, a), (lb, b), (lc, c))}
    return Plane(d1=d1, d2=d2, points={la: (0.0, 0.0), lb: (1.0, 0.0), lc: (t, 1.0)}, cos=cosine(d1, d2),
                 steps=steps, kind="plane", centre=la)


# ------------------------------------------------------------- momentum, gradient, Hessian
@torch.no_grad()
def momentum_direction(
    momentum: Mapping[str, Tensor],
    model: nn.Module,
    *,
    normalization: str = "filter",
    one_d: str = "ignore",
    params: GroupSpec = "all",
) -> Direction:
    """The optimizer's momentum buffer as a direction (MSAM's ascent direction), normalized.

    Args:
        momentum: ``{name: buffer}``, e.g. :meth:`landscape.checkpoint.Checkpoint.momentum`
            (SGD ``momentum_buffer`` or Adam ``exp_avg``). Parameters of the group without a
            buffer count as zeros; names outside the group are ignored.
        model: the network the buffers belong to (read only).
        normalization, one_d: as :func:`normalize` (``"none"`` keeps the buffer's own scale).
        params: the parameter group.

    Raises:
        DirectionError: a buffer's shape differs from its parameter's, or no buffer covers the
            group.

    Example:
        >>> import torch, torch.nn as nn
        >>> lin = nn.Linear(3, 2)
        >>> d = momentum_direction({"weight": torch.ones(2, 3)}, lin, normalization="none", one_d="filter")
        >>> d["weight"].sum().item(), d["bias"].tolist()
        (6.0, [0.0, 0.0])
    """
    chosen = select(model, params)
    covered = {n: momentum[n] for n in chosen if n in momentum}
    if not covered:
        first = next(iter(chosen))
        raise DirectionError(
            f"momentum_direction: the momentum buffers cover none of the {len(chosen)} parameters of group "
            f"{params!r} (e.g. {first!r}); pass Checkpoint.momentum() of the same model"
        )
    check_direction(covered, model, what="momentum")
    raw = {n: (covered[n].detach().to(device=p.device, dtype=p.dtype) if n in covered else torch.zeros_like(p.detach()))
           for n, p in chosen.items()}
    return normalize(raw, model, normalization=normalization, one_d=one_d)


def gradient_direction(
    model: nn.Module,
    data,
    *,
    normalization: str = "filter",
    one_d: str = "ignore",
    params: GroupSpec = "all",
    **objective_options: Any,
) -> Direction:
    """The gradient of the data-set loss as a direction (the loss increases along ``+alpha``).

    Computed by :class:`landscape.objective.Objective` (its batch loop, BatchNorm modes,
    losses and data forms; the model is not changed), then rescaled by :func:`normalize`.

    Args:
        model: the network.
        data: any data form the objective accepts.
        normalization, one_d: as :func:`normalize` (``"none"``: the gradient itself).
        params: the parameter group.
        **objective_options: ``batch_size``, ``max_samples``, ``bn_mode``, ``loss``,
            ``logit_normalize``, ``dtype``, ``batch_fn``, ``output_fn`` of the objective.

    Example:
        >>> import torch, torch.nn as nn
        >>> lin = nn.Linear(3, 2)
        >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
        >>> g = gradient_direction(lin, (x, y), normalization="none", one_d="filter", batch_size=4)
        >>> lin.zero_grad(); nn.functional.cross_entropy(lin(x), y).backward()
        >>> torch.allclose(g["weight"], lin.weight.grad, atol=1e-6)
        True
    """
    from landscape.objective import Objective

    _check_choice(normalization, NORMALIZATIONS, "normalization")
    _check_choice(one_d, ONE_D, "one_d")
    obj = Objective(model, data, params=params, **objective_options)
    grad = obj.unflatten(obj.grad())
    chosen = select(model, params)
    raw = {n: t.detach().to(chosen[n].device).clone() for n, t in grad.items()}
    return normalize(raw, model, normalization=normalization, one_d=one_d)


def _squeeze_extra(var, keep: tuple[str, ...], what: str):
    extra = [d for d in var.dims if d not in keep]
    wide = [d for d in extra if var.sizes[d] != 1]
    if wide:
        raise DirectionError(
            f"{what} has extra dimension(s) {wide} of length > 1: select one result first (e.g. ds.isel({wide[0]}=0))"
        )
    return var.isel({d: 0 for d in extra}).transpose(*keep)


@torch.no_grad()
def eigenvector_directions(
    model: nn.Module,
    hessian_result_or_vectors: Any,
    *,
    k: int = 2,
    params: GroupSpec | None = None,
) -> list[Direction]:
    """The top-``k`` Hessian eigenvectors as directions (unit vectors over the group, unnormalized).

    Args:
        model: the network the eigenvectors were computed for.
        hessian_result_or_vectors: a :func:`landscape.hessian_spectrum` result computed with
            ``eigenvectors=True`` (variable ``eigenvectors(k, parameter)`` in the group's flat
            order, coordinate ``parameter_name``; length-1 ``run``/``step`` dimensions of a
            stored result are dropped), or flat tensors: a ``(k, P)`` tensor, one ``(P,)``
            tensor or a sequence of them.
        k: how many, in rank order (``lambda_1`` first).
        params: the group: ``None`` takes the Dataset's own (``parameter_name``; ``"all"`` for
            flat tensors); a spec is checked against it.

    Returns:
        ``[v_1, ..., v_k]`` on the parameters' devices and dtypes. Apply :func:`normalize` for a
        filter-normalized version.

    Raises:
        DirectionError: no eigenvectors stored, fewer than ``k``, or another group/architecture.

    Example:
        >>> import torch, torch.nn as nn
        >>> lin = nn.Linear(2, 1)
        >>> v = eigenvector_directions(lin, torch.eye(3), k=2)
        >>> v[1]["weight"].tolist(), v[1]["bias"].tolist()
        ([[0.0, 1.0]], [0.0])
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DirectionError(f"eigenvector_directions: k must be a positive int, got {k!r}")
    names: list[str] | None = None
    if isinstance(hessian_result_or_vectors, Tensor):
        mat = hessian_result_or_vectors.detach()
        mat = mat.reshape(1, -1) if mat.ndim == 1 else mat
    elif isinstance(hessian_result_or_vectors, Sequence) and all(isinstance(v, Tensor) for v in hessian_result_or_vectors):
        mat = torch.stack([v.detach().reshape(-1) for v in hessian_result_or_vectors])
    elif hasattr(hessian_result_or_vectors, "variables"):
        ds = hessian_result_or_vectors
        if "eigenvectors" not in ds.variables:
            raise DirectionError(
                "eigenvector_directions: the Hessian result holds no eigenvectors; compute it with "
                "landscape.hessian_spectrum(..., eigenvectors=True)"
            )
        var = _squeeze_extra(ds["eigenvectors"], ("k", "parameter"), "eigenvectors")
        mat = torch.from_numpy(var.values.copy())
        if "parameter_name" in var.coords:
            pn = [str(x) for x in var["parameter_name"].values]
            names = [n for i, n in enumerate(pn) if i == 0 or pn[i - 1] != n]
    else:
        raise DirectionError(
            f"eigenvector_directions: got a {type(hessian_result_or_vectors).__name__}; accepted: a hessian_spectrum "
            "result Dataset (eigenvectors=True), a (k, P) tensor or a sequence of flat tensors"
        )
    if mat.ndim != 2:
        raise DirectionError(f"eigenvector_directions: expected a (k, P) matrix of eigenvectors, got shape {tuple(mat.shape)}")
    if k > mat.shape[0]:
        raise DirectionError(f"eigenvector_directions: k={k} but only {mat.shape[0]} eigenvectors are given")
    if names is not None:
        params_model = dict(model.named_parameters())
        missing = [n for n in names if n not in params_model]
        if missing:
            raise DirectionError(
                f"eigenvector_directions: the eigenvectors are over parameter {missing[0]!r}, which the model "
                f"({type(model).__name__}) does not have"
            )
        if params is not None and list(select(model, params)) != names:
            raise DirectionError(
                f"eigenvector_directions: the eigenvectors are over {len(names)} parameter tensors "
                f"({names[0]!r}, ...), not group {params!r} of the model ({len(select(model, params))} tensors)"
            )
        shapes: Mapping[str, Any] = {n: params_model[n] for n in names}
    else:
        shapes = select(model, "all" if params is None else params)
    total = sum(p.numel() for p in shapes.values())
    if mat.shape[1] != total:
        raise DirectionError(
            f"eigenvector_directions: the eigenvectors have {mat.shape[1]} entries but the group has {total} "
            "parameters (another architecture or group)"
        )
    out = []
    for row in mat[:k]:
        d = from_flat(row, {n: p.shape for n, p in shapes.items()})
        out.append({n: t.to(device=shapes[n].device, dtype=shapes[n].dtype) for n, t in d.items()})
    return out


# --------------------------------------------------------------------------- trajectory
@torch.no_grad()
def trajectory_pca(
    states: Sequence[Any],
    *,
    centre: int = -1,
    params: GroupSpec = "all",
    steps: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    model: nn.Module | None = None,
    demean: bool = False,
) -> Plane:
    """The plane of the first two PCA directions of a training trajectory (Li et al. Section 7).

    The matrix ``M`` has one row ``theta_i - theta_centre`` per checkpoint other than the centre
    (the final one by default, as Li et al.); its top two right singular vectors are the unit
    directions ``d1``, ``d2``; every checkpoint's coordinates are its projections
    ``((theta_i - theta_centre) . d1, (theta_i - theta_centre) . d2)``, so a trajectory lying in a
    plane through the centre is reproduced exactly. ``torch.linalg.svd`` of ``M`` in float64
    when it has at most 32 M entries, else the eigen-decomposition of the ``n x n`` Gram matrix
    ``M M^T`` accumulated one parameter tensor at a time (memory: one copy of the group per
    checkpoint, the checkpoints themselves). Signs are fixed so that the first non-centre
    checkpoint has coordinates <= 0 (training moves towards ``+alpha``, ``+beta``).

    Args:
        states: the run's checkpoints in training order: models, state dicts (with ``model=``)
            or Checkpoints (whose ``.step`` is used), at least three.
        centre: index of the plane's origin (default ``-1``: the final checkpoint).
        params: the parameter group.
        steps: the training step of each checkpoint (default: the Checkpoints' steps, else -1).
        labels: point labels (default: the steps when known and distinct, else ``"0"``, ``"1"``...).
        model: the architecture when ``states`` are state dicts (names, shapes, the group).
        demean: subtract the mean row before the decomposition (PCA proper, as scikit-learn's
            ``PCA`` in the reference code); default ``False`` decomposes ``M`` itself, whose
            directions capture the most of the displacements from the centre drawn in the plane.

    Returns:
        A :class:`Plane` (``kind="trajectory"``) with ``points`` for every checkpoint,
        ``explained_variance`` (the ratios ``s_k^2 / sum s^2``), ``steps`` and ``centre``.

    Raises:
        DirectionError: fewer than three checkpoints, another architecture (naming the
            parameter), a trajectory that spans fewer than two directions.

    Example:
        >>> import torch, torch.nn as nn
        >>> base = nn.Linear(3, 1)
        >>> e1, e2 = torch.eye(3)[0:1], torch.eye(3)[1:2]
        >>> traj = [{"weight": base.weight.detach() + a * e1 + b * e2, "bias": base.bias.detach()}
        ...         for a, b in [(-2.0, -1.0), (-1.0, 0.5), (0.0, 0.0)]]
        >>> p = trajectory_pca(traj, model=base)
        >>> [round(sum(c * c for c in p.points[k]) ** 0.5, 6) for k in ("0", "1", "2")]
        [2.236068, 1.118034, 0.0]
        >>> round(sum(p.explained_variance), 6)
        1.0
    """
    states = list(states)
    n = len(states)
    if n < 3:
        raise DirectionError(f"trajectory_pca: needs at least 3 checkpoints for a plane, got {n}")
    if isinstance(centre, bool) or not isinstance(centre, int) or not -n <= centre < n:
        raise DirectionError(f"trajectory_pca: centre={centre!r} is not an index into the {n} checkpoints")
    c = centre % n
    ref = model if model is not None else next((m for m in map(_module_of, states) if m is not None), None)
    names = _group_names(ref, params)
    tensors = [_state_of(x, f"checkpoint {i}") for i, x in enumerate(states)]
    # validate every checkpoint against the centre once (one home: checkpoint_direction's check)
    shapes: dict[str, torch.Size] = {}
    for name in names:
        if name not in tensors[c]:
            raise DirectionError(f"trajectory_pca: parameter {name!r} is missing from checkpoint {c} (the centre)")
        shapes[name] = tensors[c][name].shape
    for i, t in enumerate(tensors):
        for name in names:
            if name not in t:
                raise DirectionError(f"trajectory_pca: another architecture: parameter {name!r} is missing from checkpoint {i}")
            if t[name].shape != shapes[name]:
                raise DirectionError(
                    f"trajectory_pca: another architecture: parameter {name!r} has shape {tuple(t[name].shape)} in "
                    f"checkpoint {i} and {tuple(shapes[name])} in the centre (checkpoint {c})"
                )
    rows = [i for i in range(n) if i != c]
    total = sum(math.prod(s) for s in shapes.values())

    dev = tensors[c][names[0]].device
    m_rows = len(rows)

    def block(name: str, out: Tensor | None = None) -> Tensor:
        """Rows theta_i - theta_c of one tensor in float64, on the centre's device: (n - 1, numel),
        written into ``out`` when given; one fused subtract-and-cast pass per row."""
        ctr = tensors[c][name].detach().reshape(-1).to(device=dev, dtype=torch.float64)
        if out is None:
            out = torch.empty(m_rows, ctr.numel(), dtype=torch.float64, device=dev)
        for r, i in enumerate(rows):
            torch.sub(tensors[i][name].detach().reshape(-1).to(dev), ctr, out=out[r])
        return out

    centring = torch.eye(m_rows, dtype=torch.float64, device=dev) - (1.0 / m_rows if demean else 0.0)
    if m_rows * total <= _SVD_MAX_ENTRIES:
        mat = torch.empty(m_rows, total, dtype=torch.float64, device=dev)
        off = 0
        for name in names:
            k = math.prod(shapes[name])
            block(name, mat[:, off:off + k])
            off += k
        _, sv, vh = torch.linalg.svd(centring @ mat if demean else mat, full_matrices=False)
        energy = sv.pow(2)
        vecs = vh[:2]
        coords = mat @ vecs.T  # (n - 1, 2)
    else:
        gram = torch.zeros(m_rows, m_rows, dtype=torch.float64, device=dev)
        buf = torch.empty(m_rows * max(math.prod(sh) for sh in shapes.values()), dtype=torch.float64, device=dev)
        for name in names:
            b = block(name, buf[: m_rows * math.prod(shapes[name])].view(m_rows, -1))
            gram += b @ b.T
        lam, u = torch.linalg.eigh(centring @ gram @ centring)
        lam, u = lam.flip(0).clamp_min(0), u.flip(1)
        energy = lam
        w = centring @ u[:, :2] / lam[:2].clamp_min(1e-300).sqrt()
        coords = gram @ w
        vecs = torch.empty(2, total, dtype=torch.float64, device=dev)  # v = M^T w, one tensor at a time
        off = 0
        for name in names:
            k = math.prod(shapes[name])
            b = block(name, buf[: m_rows * k].view(m_rows, -1))
            vecs[:, off:off + k] = w.T @ b
            off += k
    if energy.numel() < 2 or not float(energy[1]) > 1e-24 * float(energy[0]):
        raise DirectionError(
            "trajectory_pca: the checkpoints' displacements from the centre span fewer than two directions, so "
            "there is no PCA plane (are checkpoints repeated?)"
        )
    # fix the signs: the first non-centre checkpoint lies at coordinates <= 0
    sign = torch.where(coords[0] > 0, -1.0, 1.0).to(torch.float64)
    vecs, coords = vecs * sign[:, None], coords * sign
    ratio = energy[:2] / energy.sum()

    if steps is None:
        known = [_step_of(x) for x in states]
        steps_list = [-1 if s is None else s for s in known]
    else:
        steps_list = [int(s) for s in steps]
        if len(steps_list) != n:
            raise DirectionError(f"trajectory_pca: {len(steps_list)} steps for {n} checkpoints")
    if labels is None:
        distinct = len(set(steps_list)) == n and -1 not in steps_list
        labels_list = [str(s) for s in steps_list] if distinct else [str(i) for i in range(n)]
    else:
        labels_list = [str(x) for x in labels]
        if len(labels_list) != n or len(set(labels_list)) != n:
            raise DirectionError(f"trajectory_pca: labels must be {n} distinct names, got {labels_list}")

    target = {nm: tensors[c][nm] for nm in names}
    dirs = []
    for v in vecs:
        d = from_flat(v, dict(shapes))
        dirs.append({nm: t.to(device=target[nm].device, dtype=target[nm].dtype) for nm, t in d.items()})
    points: dict[str, tuple[float, float]] = {}
    coord_of = dict(zip(rows, coords.tolist()))
    for i, label in enumerate(labels_list):
        points[label] = (0.0, 0.0) if i == c else (float(coord_of[i][0]), float(coord_of[i][1]))
    return Plane(d1=dirs[0], d2=dirs[1], points=points,
                 explained_variance=(float(ratio[0]), float(ratio[1])), cos=cosine(dirs[0], dirs[1]),
                 steps=dict(zip(labels_list, steps_list)), kind="trajectory", centre=labels_list[c])


# --------------------------------------------------------------------------- datasets
def _as_labelled(directions: Any) -> dict[str, Mapping[str, Tensor]]:
    if isinstance(directions, Plane):
        return {"d1": directions.d1, "d2": directions.d2}
    if isinstance(directions, Mapping):
        values = list(directions.values())
        if values and all(isinstance(v, Tensor) for v in values):
            return {"d1": directions}
        if values and all(isinstance(v, Mapping) for v in values):
            return {str(k): v for k, v in directions.items()}
    elif isinstance(directions, Sequence) and directions and all(isinstance(v, Mapping) for v in directions):
        return {f"d{i + 1}": v for i, v in enumerate(directions)}
    raise DirectionError(
        f"directions must be a direction (name -> tensor), a sequence of them, a mapping label -> direction or "
        f"a Plane; got {type(directions).__name__}"
    )


def directions_to_dataset(ds, directions: Any):
    """Store directions in a result Dataset, so the same plane can be evaluated again.

    Adds the variable ``direction_vector`` (dims ``direction``, ``parameter``: each direction
    flattened over the union of their names, absent names as zeros) and the attributes
    ``direction_names_json`` and ``direction_shapes_json``. The ``direction`` labels are
    ``d1``, ``d2``, ... (or the mapping's keys); a Dataset that already has a ``direction``
    coordinate must have the same labels.

    Args:
        ds: an ``xarray.Dataset`` (not modified).
        directions: a direction, a sequence of directions, ``{label: direction}`` or a Plane.

    Returns:
        A new Dataset. It survives :func:`landscape.results.write_result` / ``read_result``.

    Example:
        >>> import torch, xarray as xr
        >>> d = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
        >>> ds = directions_to_dataset(xr.Dataset(), [d, d])
        >>> ds.direction_vector.dims, ds.direction_vector.shape
        (('direction', 'parameter'), (2, 6))
    """
    import numpy as np

    labelled = _as_labelled(directions)
    shapes: dict[str, torch.Size] = {}
    for label, d in labelled.items():
        for name, t in d.items():
            if not isinstance(t, Tensor):
                raise DirectionError(f"direction {label!r}: {name!r} is a {type(t).__name__}, not a tensor")
            if name in shapes and shapes[name] != t.shape:
                raise DirectionError(
                    f"direction {label!r}: parameter {name!r} has shape {tuple(t.shape)}, another direction {tuple(shapes[name])}"
                )
            shapes.setdefault(name, t.shape)
    if "direction" in ds.coords and list(map(str, ds.direction.values)) != list(labelled):
        raise DirectionError(
            f"the Dataset's direction coordinate is {list(map(str, ds.direction.values))}, the directions are {list(labelled)}"
        )
    rows = []
    for d in labelled.values():
        ref = next(iter(d.values()))
        full = {n: d[n] if n in d else torch.zeros(s, dtype=ref.dtype, device=ref.device) for n, s in shapes.items()}
        rows.append(to_flat(full, list(shapes)).cpu())
    dtypes = {r.dtype for r in rows}
    mat = torch.stack([r.to(torch.float64 if len(dtypes) > 1 else r.dtype) for r in rows])
    if mat.dtype not in (torch.float32, torch.float64):
        mat = mat.float()
    if "parameter" in ds.dims and ds.sizes["parameter"] != mat.shape[1]:
        raise DirectionError(
            f"the Dataset already has a 'parameter' dimension of length {ds.sizes['parameter']}; the directions have {mat.shape[1]} entries"
        )
    out = ds.assign(direction_vector=(("direction", "parameter"), mat.numpy(), {
        "long_name": "direction vectors, flattened in direction_names_json order (row-major per tensor)",
        "units": "1"}))
    if "direction" not in ds.coords:
        out = out.assign_coords(direction=("direction", np.array(list(labelled), dtype=object),
                                           {"long_name": "direction", "units": "1"}))
    out.attrs["direction_names_json"] = json.dumps(list(shapes))
    out.attrs["direction_shapes_json"] = json.dumps([list(s) for s in shapes.values()])
    return out


def directions_from_dataset(ds, model: nn.Module | None = None) -> list[Direction]:
    """The directions stored by :func:`directions_to_dataset`, in ``direction`` order.

    Length-1 extra dimensions (``run``, ``step`` added by ``write_result``) are dropped.

    Args:
        ds: a Dataset with ``direction_vector`` and the two JSON attributes.
        model: if given, every tensor is checked against its parameter (name and shape; a
            :class:`DirectionError` names the first mismatch) and put on its device and dtype.

    Returns:
        ``[d1, d2, ...]``.

    Example:
        >>> import torch, torch.nn as nn, xarray as xr
        >>> lin = nn.Linear(3, 2)
        >>> ds = directions_to_dataset(xr.Dataset(), random_direction(lin, seed=0))
        >>> [list(d) for d in directions_from_dataset(ds, lin)]
        [['weight', 'bias']]
        >>> directions_from_dataset(ds, nn.Linear(4, 2))
        Traceback (most recent call last):
        ...
        landscape.directions.DirectionError: stored direction 'd1': parameter 'weight' has shape (2, 3) but the model's (Linear) has shape (2, 4)
    """
    if "direction_vector" not in ds.variables:
        raise DirectionError(
            "the Dataset holds no stored directions (variable 'direction_vector'); store them with directions_to_dataset"
        )
    for key in ("direction_names_json", "direction_shapes_json"):
        if key not in ds.attrs:
            raise DirectionError(f"the Dataset has 'direction_vector' but no attribute {key!r}")
    names = json.loads(ds.attrs["direction_names_json"])
    shapes = [tuple(s) for s in json.loads(ds.attrs["direction_shapes_json"])]
    if len(names) != len(shapes):
        raise DirectionError(f"direction_names_json has {len(names)} names but direction_shapes_json {len(shapes)} shapes")
    var = ds["direction_vector"]
    extra = [d for d in var.dims if d not in ("direction", "parameter")]
    wide = [d for d in extra if var.sizes[d] != 1]
    if wide:
        raise DirectionError(
            f"direction_vector has extra dimension(s) {wide} of length > 1: select one result first "
            f"(e.g. ds.isel({wide[0]}=0))"
        )
    var = var.isel({d: 0 for d in extra}).transpose("direction", "parameter")
    mat = torch.from_numpy(var.values.copy())
    sizes = [math.prod(s) for s in shapes]
    if mat.shape[1] != sum(sizes):
        raise DirectionError(f"direction_vector has {mat.shape[1]} entries per direction, the stored shapes {sum(sizes)}")
    labels = [str(x) for x in var["direction"].values] if "direction" in var.coords else [f"d{i + 1}" for i in range(mat.shape[0])]
    out: list[Direction] = []
    for label, row in zip(labels, mat):
        d = {n: t.reshape(s).clone() for n, s, t in zip(names, shapes, row.split(sizes))}
        if model is not None:
            chosen = check_direction(d, model, what=f"stored direction {label!r}")
            d = {n: t.to(device=chosen[n].device, dtype=chosen[n].dtype if chosen[n].is_floating_point() else t.dtype)
                 for n, t in d.items()}
        out.append(d)
    return out

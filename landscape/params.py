"""Parameter groups, selected by module type and by stage, never by name substrings.

A *group spec* is a small string language used by SAM masks, the objective and every analysis:

==================  ====================================================================
``"all"``           every trainable parameter
``"norm"``          gamma/beta of normalization layers (BatchNorm/InstanceNorm via
                    ``_NormBase``, ``LayerNorm``, ``GroupNorm``, ``RMSNorm``), by module type
``"no-norm"``       everything else
``"weights"``       non-normalization parameters with ``ndim >= 2``
``"biases"``        non-normalization parameters with ``ndim <= 1``
``"B3"``/``"B2+B3"``  every parameter inside stage 3 (or stages 2 and 3); stages are the
                    model's ``stages`` attribute (module-name prefixes), as in SAM-ON
                    Section 4.3's "B3" and "B2+B3"
``"glob:PAT|PAT"``  parameter names matching any of the ``fnmatch`` patterns
``A&B``             intersection, e.g. ``"norm&B2+B3"`` (SAM-ON's per-block SAM-ON masks)
==================  ====================================================================

Per-group analyses (:func:`landscape.hessian_spectrum`) also take several groups at once, one
result per group, expanded by :func:`expand_groups`: ``"each:layer"`` (one group per module that
directly owns trainable parameters), ``"each:stage"`` (one per stage, ``B1``, ``B2``, ...) or a
list of specs (one group per item). These are not groups themselves: :func:`select` refuses them.

Example:
    >>> import torch.nn as nn
    >>> from landscape.params import select
    >>> m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    >>> list(select(m, "norm"))
    ['1.weight', '1.bias']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from landscape.config import did_you_mean

NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.LayerNorm, nn.GroupNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)

KEYWORDS = ("all", "norm", "no-norm", "weights", "biases")
EACH = ("each:layer", "each:stage")

GroupSpec = str | Iterable[str] | Callable[[str, nn.Parameter], bool]


class GroupError(ValueError):
    """A parameter group spec that is malformed, unknown or selects nothing."""


def is_norm_module(module: nn.Module) -> bool:
    """True for normalization layers (by type, SAM-ON's "normalization parameters")."""
    return isinstance(module, NORM_TYPES)


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Names of the affine parameters (gamma, beta) of every normalization layer."""
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        if is_norm_module(module):
            for p_name, _ in module.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def stages(model: nn.Module) -> tuple[str, ...]:
    """Module-name prefixes of the model's stages (blocks) B1, B2, ..., in order."""
    st = getattr(model, "stages", None)
    if not st:
        raise GroupError(
            f"{type(model).__name__} declares no `stages` attribute, so stage groups like 'B3' "
            "cannot be resolved; use a 'glob:' spec instead"
        )
    return tuple(st)


def _in_prefix(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _term_predicate(model: nn.Module, term: str) -> Callable[[str, nn.Parameter], bool]:
    term = term.strip()
    if term == "all":
        return lambda n, p: True
    if term in ("norm", "no-norm", "weights", "biases"):
        norm = norm_parameter_names(model)
        if term == "norm":
            return lambda n, p: n in norm
        if term == "no-norm":
            return lambda n, p: n not in norm
        if term == "weights":
            return lambda n, p: n not in norm and p.ndim >= 2
        return lambda n, p: n not in norm and p.ndim <= 1
    if term.startswith("each:"):
        raise GroupError(
            f"{term!r} stands for several parameter groups, not one: only per-group analyses "
            f"(hessian_spectrum) accept {' / '.join(EACH)}; this one takes a single group such as "
            "'all', 'norm', 'B3' or 'glob:PATTERN'"
        )
    if term.startswith("glob:"):
        pats = [s for s in term[5:].split("|") if s]
        if not pats:
            raise GroupError(f"empty glob in parameter group {term!r}; write e.g. 'glob:fc.*'")
        return lambda n, p: any(fnmatch.fnmatchcase(n, pat) for pat in pats)
    if term.startswith("B") and all(t.strip()[1:].isdigit() and t.strip()[:1] == "B" for t in term.split("+")):
        prefixes = stages(model)
        chosen = []
        for t in term.split("+"):
            k = int(t.strip()[1:])
            if not 1 <= k <= len(prefixes):
                raise GroupError(
                    f"stage {t.strip()!r} does not exist: {type(model).__name__} has stages "
                    f"B1..B{len(prefixes)} ({', '.join(prefixes)})"
                )
            chosen.append(prefixes[k - 1])
        return lambda n, p: any(_in_prefix(n, pre) for pre in chosen)
    raise GroupError(
        f"unknown parameter group {term!r}"
        + did_you_mean(term, KEYWORDS)
        + f"; accepted: {', '.join(KEYWORDS)}, stages like 'B3' or 'B2+B3', 'glob:PATTERN', "
        "and intersections with '&'"
    )


def select(model: nn.Module, spec: GroupSpec = "all", *, trainable_only: bool = True) -> dict[str, nn.Parameter]:
    """Select a parameter group, in ``model.named_parameters()`` order.

    Args:
        model: the network.
        spec: a group spec string (see module docstring), a list of parameter names (their
            union), or a predicate ``(name, parameter) -> bool``.
        trainable_only: skip parameters with ``requires_grad=False``.

    Returns:
        ``{name: parameter}`` for the group. Raises ``GroupError`` if it is empty.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Conv1d(1, 2, 3), nn.GroupNorm(1, 2))
        >>> list(select(m, "weights"))
        ['0.weight']
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
    if callable(spec):
        pred = spec
        label = getattr(spec, "__name__", "predicate")
    elif isinstance(spec, str):
        preds = [_term_predicate(model, t) for t in spec.split("&")]
        pred = lambda n, p: all(f(n, p) for f in preds)  # noqa: E731
        label = spec
    else:
        wanted = list(spec)
        names = {n for n, _ in named}
        missing = [w for w in wanted if w not in names]
        if missing:
            raise GroupError(
                f"parameter {missing[0]!r} is not in the model"
                + did_you_mean(missing[0], list(names))
            )
        keep = set(wanted)
        pred = lambda n, p: n in keep  # noqa: E731
        label = f"{len(wanted)} named parameters"
    out = {n: p for n, p in named if pred(n, p)}
    if not out:
        raise GroupError(
            f"parameter group {label!r} selects no parameters of {type(model).__name__}"
            + (" (it has no normalization layers)" if label == "norm" else "")
        )
    return out


def mask(model: nn.Module, spec: GroupSpec) -> dict[str, torch.Tensor]:
    """Boolean masks (one per parameter, same shape) that are True inside the group."""
    chosen = select(model, spec)
    return {
        n: torch.full_like(p, n in chosen, dtype=torch.bool) for n, p in model.named_parameters()
    }


def count(model: nn.Module, spec: GroupSpec = "all") -> int:
    """Number of scalar entries in a group (0 when the group is empty)."""
    try:
        return sum(p.numel() for p in select(model, spec).values())
    except GroupError:
        return 0


def is_per_group(spec: object) -> bool:
    """True when ``spec`` asks for one result per group: a list/tuple of specs or ``each:...``.

    Example:
        >>> is_per_group("each:layer"), is_per_group(["B1", "B2"]), is_per_group("B1+B2")
        (True, True, False)
    """
    return isinstance(spec, (list, tuple)) or (isinstance(spec, str) and spec.strip().startswith("each:"))


def layer_groups(model: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """``each:layer``: ``(module name, parameter names)`` per module owning trainable parameters.

    A parameter belongs to the module that registered it directly (its name minus the last
    component: ``"layer1.0.conv1.weight"`` -> ``"layer1.0.conv1"``), so a Conv/Linear layer is one
    group with its bias and a BatchNorm/LayerNorm its own group (gamma and beta); a module with
    both own parameters and children (e.g. ``nn.MultiheadAttention``'s ``in_proj_*`` beside its
    ``out_proj``) owns only its own. Parameters registered on the model itself (a ViT's
    ``cls_token``) are one group each, named by the parameter. Groups are in
    ``model.named_parameters()`` order (the order of their first parameter); frozen parameters
    (``requires_grad=False``) are left out, and a shared (tied) parameter counts once, under the
    name ``named_parameters`` gives it.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2, bias=False))
        >>> layer_groups(m)
        [('0', ('0.weight', '0.bias')), ('1', ('1.weight', '1.bias')), ('3', ('3.weight',))]
    """
    groups: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            owner = name.rpartition(".")[0] or name
            groups.setdefault(owner, []).append(name)
    if not groups:
        raise GroupError(f"{type(model).__name__} has no trainable parameters, so 'each:layer' gives no group")
    return [(owner, tuple(names)) for owner, names in groups.items()]


def owner_type(model: nn.Module, spec: GroupSpec) -> str:
    """The class name of the one module that directly owns every parameter of the group
    (``"Conv2d"`` for an ``each:layer`` group), else ``""`` (a stage, a union of layers, or
    parameters on the model itself).

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> owner_type(m, "norm"), owner_type(m, "all")
        ('BatchNorm1d', '')
    """
    owners = {name.rpartition(".")[0] for name in select(model, spec)}
    if len(owners) != 1 or "" in owners:
        return ""
    return type(model.get_submodule(owners.pop())).__name__


def expand_groups(model: nn.Module, spec: str | Iterable[str]) -> list[tuple[str, GroupSpec]]:
    """The groups of a per-group spec, as ``[(name, group spec), ...]`` in order.

    * ``"each:layer"``: :func:`layer_groups` (named by module, in model order);
    * ``"each:stage"``: ``("B1", "B1"), ("B2", "B2"), ...`` over the model's ``stages``
      (parameters outside every stage, such as a stem or a head, are in no group);
    * a list or tuple: one group per item, named by the item; an item is a group spec
      (``"B1+B2"`` and ``"glob:fc.*"`` are one group each: the union of their parameters), an
      exact parameter name (a group of that one tensor) or itself ``"each:..."`` (expanded in
      place);
    * any other string: that one group, ``[(spec, spec)]``.

    Every group is checked with :func:`select` here, so a bad or empty group fails before any
    data is staged.

    Raises:
        GroupError: an unknown ``each:`` form, a model without ``stages`` for ``each:stage``, an
            empty list, a group that selects nothing, or two groups with the same name.

    Example:
        >>> from landscape.models import build_model
        >>> m = build_model("resnet1d", input_shape=(40,), num_classes=10, width=4)
        >>> [name for name, _ in expand_groups(m, "each:stage")]
        ['B1', 'B2', 'B3']
        >>> [name for name, _ in expand_groups(m, ["B1", "norm&B3", "fc.bias"])]
        ['B1', 'norm&B3', 'fc.bias']
    """
    if isinstance(spec, str):
        items, top = [spec], True
    elif isinstance(spec, (list, tuple)):
        items, top = list(spec), False
        if not items:
            raise GroupError("an empty list of parameter groups; give at least one spec, e.g. ['B1', 'B2']")
    else:
        raise GroupError(f"a per-group spec must be a string or a list of strings, got {type(spec).__name__} {spec!r}")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    out: list[tuple[str, GroupSpec]] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise GroupError(f"parameter group {item!r} in {spec!r} is not a non-empty string")
        item = item.strip()
        if item == "each:layer":
            out.extend(layer_groups(model))
        elif item == "each:stage":
            if not getattr(model, "stages", None):
                raise GroupError(
                    f"'each:stage' needs a model with a `stages` attribute (module-name prefixes of its blocks); "
                    f"{type(model).__name__} has none: use 'each:layer' or a list of 'glob:' specs"
                )
            out.extend((f"B{i}", f"B{i}") for i in range(1, len(stages(model)) + 1))
        elif item.startswith("each:"):
            raise GroupError(f"unknown per-group spec {item!r}" + did_you_mean(item, EACH)
                             + f"; accepted: {', '.join(EACH)}, or a list of group specs")
        elif item in trainable and not top:
            out.append((item, (item,)))
        else:
            out.append((item, item))
    seen: set[str] = set()
    for name, group in out:
        if name in seen:
            raise GroupError(f"parameter group {name!r} appears twice in {spec!r}; each group needs its own name")
        seen.add(name)
        select(model, group)  # raises GroupError naming the group when it is bad or empty
    return out

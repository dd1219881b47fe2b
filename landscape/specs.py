"""Model and data specs: one resolver for zoo names, import paths, factories and objects.

Everything that takes "a model" or "a data set" from a user (``load_checkpoint``, ``analyze``,
the CLI's ``--model`` / ``--data``, TOML ``[model]`` / ``[data]`` tables) resolves it here:

- **model**: an ``nn.Module`` class or factory (any callable returning a module), an import path
  ``"package.module:factory"`` (the attribute may be dotted, ``"pkg.nets:Zoo.small"``), a zoo
  name (``"resnet18_cifar"``) or a spec dict ``{"name": <zoo name or import path>, "kwargs":
  {...}}``; keyword arguments are merged (the explicit ones win). Every model is counted on the
  meta device before its weights are allocated (``max_parameters``).
- **data**: a data object as is (a ``Dataset``, ``DataLoader``, ``(x, y)`` tuple, iterable of
  batches), a factory (called with ``split=`` when its signature takes ``split``), an import path
  to either, a zoo data set name (:func:`landscape.data.get_dataset`) or a spec dict.

Import paths are what crosses process boundaries: :func:`spec_to_json` turns a spec into
``{"name": str, "kwargs": {...}}`` (JSON-plain) or says why it cannot (a lambda, a function defined
inside another function, a data object), and a worker resolves the same dict. Modules are looked
up on ``sys.path``, then ``$PYTHONPATH``, then the given ``search_paths`` (e.g. the checkpoint
folder and its parent), so a ``mynets.py`` next to the checkpoints imports in spawned workers and
Slurm jobs. Those folders are appended to ``sys.path`` (never prepended: a user file never shadows
an installed package) and stay there, so the user module's own imports keep working.

Example:
    >>> from landscape.specs import resolve_model, spec_to_json
    >>> spec = resolve_model("mlp", {"input_shape": [4], "num_classes": 2, "width": 3})
    >>> type(spec()).__name__
    'MLP'
    >>> spec_to_json(spec)
    {'name': 'mlp', 'kwargs': {'input_shape': [4], 'num_classes': 2, 'width': 3}}
    >>> type(resolve_model("torch.nn:Linear", {"in_features": 2, "out_features": 1})()).__name__
    'Linear'
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from landscape.config import did_you_mean
from landscape.models.registry import (
    MAX_PARAMETER_TENSORS,
    MAX_PARAMETERS,
    ModelBudgetError,
    build_model,
    build_within_budget,
    model_names,
)

__all__ = [
    "MAX_PARAMETERS",
    "ModelSpec",
    "SpecError",
    "build_model_from_spec",
    "default_search_paths",
    "import_object",
    "import_path_of",
    "is_import_path",
    "resolve_data",
    "resolve_model",
    "spec_to_json",
]

_IDENT = r"[A-Za-z_]\w*"
_IMPORT_PATH = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
_FORM = "'package.module:attribute' (e.g. 'mynets:make_cnn'; the attribute may be dotted)"
MODEL_FORMS = (
    "an nn.Module class or factory, an import path 'package.module:factory', a zoo model name "
    "or {'name': <zoo name or import path>, 'kwargs': {...}}"
)
DATA_FORMS = (
    "a Dataset, DataLoader, (x, y) tuple or iterable of batches, a factory (called with split= "
    "when it takes one), an import path 'package.module:factory', a zoo data set name or "
    "{'name': <zoo name or import path>, 'kwargs': {...}}"
)
_SPEC_KEYS = ("name", "kwargs")


class SpecError(ValueError):
    """A model or data spec that cannot be resolved; the message names it and what is accepted."""


# ---------------------------------------------------------------------------------- import paths


def is_import_path(text: Any) -> bool:
    """True for a string of the form ``"package.module:attribute"``.

    Example:
        >>> is_import_path("mynets:make_cnn"), is_import_path("resnet18_cifar")
        (True, False)
    """
    return isinstance(text, str) and bool(_IMPORT_PATH.match(text))


def _extend_sys_path(search_paths: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Append ``$PYTHONPATH`` entries and ``search_paths`` missing from ``sys.path``; the folders searched."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if isinstance(search_paths, (str, os.PathLike)):
        search_paths = [search_paths]
    extra += [os.fspath(p) for p in search_paths]
    added = []
    for p in extra:
        full = os.path.abspath(p)
        if full not in sys.path and p not in sys.path and os.path.isdir(full):
            sys.path.append(full)
        added.append(full)
    importlib.invalidate_caches()  # a module written a moment ago must be found
    return added


def import_object(path: str, *, search_paths: Iterable[str | os.PathLike] = ()) -> Any:
    """The object named by ``"package.module:attribute"``.

    Args:
        path: module path, a colon, attribute path (dotted for nested attributes).
        search_paths: folders searched after ``sys.path`` and ``$PYTHONPATH`` (they are appended
            to ``sys.path`` for the rest of the process, so the module's own imports work).

    Raises:
        SpecError: naming ``path`` and saying which part failed: not of the form, no such module
            (with the folders searched), the module raised while importing, or no such attribute
            (with the module's file and the names it defines).

    Example:
        >>> import_object("os.path:join")("a", "b")
        'a/b'
        >>> import_object("os.path:jion")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        landscape.specs.SpecError: cannot import 'os.path:jion': module 'os.path' ... has no attribute 'jion' (did you mean 'join'?)...
    """
    if not is_import_path(path):
        raise SpecError(f"{path!r} is not an import path; expected {_FORM}")
    module_name, attr = path.split(":")
    searched = _extend_sys_path(search_paths)
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            where = ", ".join(searched) if searched else "no extra folders"
            raise SpecError(
                f"cannot import {path!r}: no module named {missing!r} (searched sys.path, "
                f"$PYTHONPATH and {where}); put the file on PYTHONPATH or next to the checkpoint "
                "folder, or pass search_paths"
            ) from None
        raise SpecError(f"cannot import {path!r}: importing module {module_name!r} failed: {type(e).__name__}: {e}") from e
    except Exception as e:  # noqa: BLE001 - the user's module raised at import time: name it
        raise SpecError(f"cannot import {path!r}: importing module {module_name!r} raised {type(e).__name__}: {e}") from e
    parts = attr.split(".")
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = module_name + "".join("." + p for p in parts[:i])
            names = sorted(n for n in dir(obj) if not n.startswith("_"))
            file = getattr(obj, "__file__", None) if i == 0 else None
            shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
            raise SpecError(
                f"cannot import {path!r}: {'module' if i == 0 else 'object'} {owner!r}"
                + (f" ({file})" if file else "")
                + f" has no attribute {part!r}"
                + did_you_mean(part, names)
                + f"; it defines: {shown or 'nothing public'}"
            ) from None
    return obj


def import_path_of(obj: Any) -> str:
    """``"module:qualname"`` naming ``obj`` so that :func:`import_object` returns it again.

    ``__main__`` objects of a script are named ``"__main__:name"``: spawned local workers
    re-import the main script, but other machines cannot (put them into a module for Slurm).

    Raises:
        SpecError: for a lambda, a function or class defined inside a function, an object of a
            notebook's ``__main__``, or one whose name leads to another object.

    Example:
        >>> import_path_of(nn.Linear)
        'torch.nn.modules.linear:Linear'
    """
    module = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None)
    label = getattr(obj, "__name__", None) or type(obj).__name__
    if not isinstance(module, str) or not isinstance(qual, str) or "<" in qual:
        raise SpecError(
            f"{label!r} ({qual or type(obj).__name__}) cannot be named by an import path (a lambda or a "
            "function/class defined inside another function); workers import specs by name: define it "
            "at module level in a .py file and pass 'module:name'"
        )
    path = f"{module}:{qual}"
    if module == "__main__":
        main = sys.modules.get("__main__")
        if not getattr(main, "__file__", None):
            raise SpecError(
                f"{label!r} is defined in an interactive session or notebook (no file to re-import "
                "in a worker); define it in a .py file and pass 'module:name'"
            )
        target = main
        for part in qual.split("."):
            target = getattr(target, part, None)
    else:
        try:
            target = import_object(path)
        except SpecError as e:
            raise SpecError(f"{label!r} cannot be named by an import path: {e}") from None
    if target is not obj:
        raise SpecError(f"{label!r} cannot be named by an import path: {path!r} names another object")
    return path


def _plain(value: Any, where: str) -> Any:
    """JSON-plain copy (tuples become lists) or a SpecError naming the offending key."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SpecError(f"{where}: keys must be strings, got {k!r}")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise SpecError(
        f"{where}: a {type(value).__name__} cannot be sent to workers (JSON-plain values only: "
        "str, int, float, bool, None, lists and dicts of them)"
    )


def _split_dict(spec: Mapping[str, Any], what: str) -> tuple[Any, dict[str, Any]]:
    unknown = [k for k in spec if k not in _SPEC_KEYS]
    if unknown or "name" not in spec:
        raise SpecError(
            f"{what} spec {dict(spec)!r}: expected {{'name': ..., 'kwargs': {{...}}}}"
            + (f"; unknown key(s) {', '.join(map(repr, unknown))}" if unknown else "; 'name' missing")
        )
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise SpecError(f"{what} spec {dict(spec)!r}: 'kwargs' must be a dict, got {type(kwargs).__name__}")
    return spec["name"], dict(kwargs)


def _merge(base: Mapping[str, Any], kwargs: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if kwargs is None:
        return dict(base)
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise SpecError(f"{what} kwargs must be a dict with string keys, got {kwargs!r}")
    return {**base, **kwargs}


# ---------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model spec: calling it (or :meth:`build`) returns a fresh ``nn.Module``.

    Attributes:
        name: the zoo name, the import path, or (for a callable without one) its qualified name.
        kwargs: keyword arguments of the builder.
        factory: the callable for import paths and callables; ``None`` for zoo models.
        importable: whether :meth:`to_json` can describe it for a worker.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    factory: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    importable: bool = True
    max_parameters: int = MAX_PARAMETERS
    max_parameter_tensors: int = MAX_PARAMETER_TENSORS

    @property
    def description(self) -> str:
        return f"model spec {{'name': {self.name!r}, 'kwargs': {self.kwargs!r}}}"

    def build(self) -> nn.Module:
        """A fresh model, counted on the meta device before its weights are allocated.

        Raises:
            SpecError: the parameter budget is exceeded, the factory raised (named, with its
                exception), or it returned something other than an ``nn.Module``.
        """
        if self.factory is None:
            try:
                return build_model(self.name, max_parameters=self.max_parameters, max_parameter_tensors=self.max_parameter_tensors, **self.kwargs)
            except ModelBudgetError as e:
                raise SpecError(str(e)) from None
            except ValueError as e:
                raise SpecError(f"{self.description}: {e}") from None
            except Exception as e:  # noqa: BLE001 - a zoo builder failing on odd kwargs: say which
                raise SpecError(f"{self.description}: building it raised {type(e).__name__}: {e}") from e
        try:
            model = build_within_budget(
                self.factory, self.kwargs, what=self.description,
                max_parameters=self.max_parameters, max_parameter_tensors=self.max_parameter_tensors,
            )
        except ModelBudgetError as e:
            raise SpecError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - user code: name the factory and its exception
            raise SpecError(f"model factory {self.name!r} (kwargs {self.kwargs!r}) raised {type(e).__name__}: {e}") from e
        if not isinstance(model, nn.Module):
            raise SpecError(f"model factory {self.name!r} returned a {type(model).__name__}, not an nn.Module")
        if self.importable:
            try:  # lets save_checkpoint record how to rebuild it
                model.landscape_spec = {"name": self.name, "kwargs": dict(self.kwargs)}
            except Exception:  # noqa: BLE001 - a module that forbids attributes still works
                pass
        return model

    __call__ = build

    def to_json(self) -> dict[str, Any]:
        """``{"name": str, "kwargs": {...}}``, JSON-plain, resolvable by a worker."""
        if not self.importable:
            import_path_of(self.factory)  # raises the reason
        return {"name": self.name, "kwargs": _plain(self.kwargs, f"{self.description} kwargs")}


def resolve_model(
    spec: Any,
    kwargs: Mapping[str, Any] | None = None,
    *,
    search_paths: Iterable[str | os.PathLike] = (),
    max_parameters: int = MAX_PARAMETERS,
    max_parameter_tensors: int = MAX_PARAMETER_TENSORS,
) -> ModelSpec:
    """A :class:`ModelSpec` (a zero-argument model factory) from any accepted model spec.

    Args:
        spec: an ``nn.Module`` class or factory, ``"package.module:factory"``, a zoo name, a
            ``{"name": ..., "kwargs": {...}}`` dict or a :class:`ModelSpec`.
        kwargs: merged over the spec's own kwargs (these win).
        search_paths: extra folders for import paths (see :func:`import_object`).
        max_parameters, max_parameter_tensors: budget checked on the meta device at build time.

    Raises:
        SpecError: unknown zoo name (with the list), a path that does not import, an object that
            is not callable, an ``nn.Module`` instance (each use needs a fresh model).

    Example:
        >>> spec = resolve_model({"name": "mlp", "kwargs": {"width": 3}}, {"input_shape": [2]})
        >>> spec.kwargs
        {'width': 3, 'input_shape': [2]}
    """
    budget = {"max_parameters": int(max_parameters), "max_parameter_tensors": int(max_parameter_tensors)}
    if isinstance(spec, ModelSpec):
        return ModelSpec(spec.name, _merge(spec.kwargs, kwargs, "model"), spec.factory, spec.importable, **budget)
    base: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        spec, base = _split_dict(spec, "model")
    merged = _merge(base, kwargs, "model")
    if isinstance(spec, nn.Module):
        raise SpecError(
            f"got an nn.Module instance ({type(spec).__name__}); pass its class or a factory "
            f"(every checkpoint needs a fresh model); accepted: {MODEL_FORMS}"
        )
    if isinstance(spec, str):
        if ":" in spec:
            obj = import_object(spec, search_paths=search_paths)
            if isinstance(obj, nn.Module) or not callable(obj):
                raise SpecError(f"model spec {spec!r} names a {type(obj).__name__}, not a model class or factory; accepted: {MODEL_FORMS}")
            return ModelSpec(spec, merged, obj, True, **budget)
        if spec not in model_names():
            raise SpecError(
                f"unknown model {spec!r}" + did_you_mean(spec, model_names())
                + f"; zoo models: {', '.join(model_names())}; or an import path {_FORM}"
            )
        return ModelSpec(spec, merged, None, True, **budget)
    if callable(spec):
        try:
            return ModelSpec(import_path_of(spec), merged, spec, True, **budget)
        except SpecError:  # usable in this process; to_json says why workers cannot use it
            label = getattr(spec, "__qualname__", None) or type(spec).__name__
            return ModelSpec(label, merged, spec, False, **budget)
    raise SpecError(f"model spec of type {type(spec).__name__} ({spec!r:.80}) not understood; accepted: {MODEL_FORMS}")


def build_model_from_spec(spec: Any, kwargs: Mapping[str, Any] | None = None, **options: Any) -> nn.Module:
    """``resolve_model(spec, kwargs, **options)()``: a fresh model from any accepted spec.

    Example:
        >>> build_model_from_spec("torch.nn:Linear", {"in_features": 3, "out_features": 1}).in_features
        3
    """
    return resolve_model(spec, kwargs, **options).build()


# ------------------------------------------------------------------------------------------ data


def _is_factory(obj: Any) -> bool:
    """A callable that makes data, as opposed to a data object (a Dataset may define ``__call__``)."""
    if isinstance(obj, (type, functools.partial)) or inspect.isroutine(obj):
        return True
    return callable(obj) and not hasattr(obj, "__getitem__") and not hasattr(obj, "__iter__")


def _takes_split(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("split")
    return p is not None and p.kind is not inspect.Parameter.POSITIONAL_ONLY


def _call_data_factory(fn: Callable[..., Any], label: str, split: str, kwargs: dict[str, Any]) -> Any:
    call_kwargs = {"split": split, **kwargs} if _takes_split(fn) else dict(kwargs)
    try:
        data = fn(**call_kwargs)
    except Exception as e:  # noqa: BLE001 - user code: name the factory and its exception
        raise SpecError(f"data factory {label!r} (kwargs {call_kwargs!r}) raised {type(e).__name__}: {e}") from e
    if data is None:
        raise SpecError(f"data factory {label!r} returned None; it must return {DATA_FORMS.split(', a factory')[0]}")
    return data


def resolve_data(
    spec: Any,
    split: str = "train",
    kwargs: Mapping[str, Any] | None = None,
    *,
    search_paths: Iterable[str | os.PathLike] = (),
) -> Any:
    """The data of any accepted data spec, for ``split``.

    Args:
        spec: a data object (returned as is), a factory (called with ``split=split`` when its
            signature has a ``split`` parameter, and ``**kwargs``), ``"package.module:attr"``
            naming either, a zoo data set name (:func:`landscape.data.get_dataset`) or a
            ``{"name": ..., "kwargs": {...}}`` dict.
        split: ``"train"`` or ``"test"`` for zoo data sets; passed through to factories.
        kwargs: merged over the spec's kwargs.
        search_paths: extra folders for import paths.

    Raises:
        SpecError: naming the spec (unknown name with the list, import failures, a factory that
            raised, kwargs given for a data object).

    Example:
        >>> len(resolve_data("synthetic", "test", {"num_samples": 8, "input_shape": [3]}))
        8
        >>> x_y = resolve_data(lambda split, n=2: (split, n), "test", {"n": 5})
        >>> x_y
        ('test', 5)
    """
    base: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        spec, base = _split_dict(spec, "data")
    merged = _merge(base, kwargs, "data")
    if isinstance(spec, str):
        if ":" in spec:
            obj = import_object(spec, search_paths=search_paths)
            if _is_factory(obj):
                return _call_data_factory(obj, spec, split, merged)
            if merged:
                raise SpecError(f"data spec {spec!r} names a {type(obj).__name__} object, which takes no kwargs (got {merged!r})")
            return obj
        from landscape.data import dataset_names, get_dataset

        if spec not in dataset_names():
            raise SpecError(
                f"unknown dataset {spec!r}" + did_you_mean(spec, dataset_names())
                + f"; zoo data sets: {', '.join(dataset_names())}; or an import path {_FORM}"
            )
        try:
            return get_dataset(spec, split, **merged)
        except (ValueError, TypeError, OSError) as e:
            raise SpecError(f"data spec {{'name': {spec!r}, 'kwargs': {merged!r}}}: {e}") from None
    if _is_factory(spec):
        label = getattr(spec, "__qualname__", None) or type(spec).__name__
        return _call_data_factory(spec, label, split, merged)
    if spec is None:
        raise SpecError(f"no data given; accepted: {DATA_FORMS}")
    if merged:
        raise SpecError(f"data kwargs {merged!r} given for a {type(spec).__name__} object (only factories and names take kwargs)")
    return spec


# ------------------------------------------------------------------------------------------ JSON


def spec_to_json(spec: Any, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"name": str, "kwargs": {...}}`` (JSON-plain) describing a model or data spec for a worker.

    Accepts what :func:`resolve_model` / :func:`resolve_data` accept by name: a zoo name, an
    import path, a spec dict, a :class:`ModelSpec`, or a module-level callable (named by its
    import path). Does not import or build anything for names and dicts.

    Raises:
        SpecError: a lambda or local function (no import path), a data object (a ``Dataset``
            instance cannot be sent by name: pass a factory's import path), non-plain kwargs.

    Example:
        >>> spec_to_json("mynets:make_cnn", {"width": 8, "shape": (3, 32, 32)})
        {'name': 'mynets:make_cnn', 'kwargs': {'width': 8, 'shape': [3, 32, 32]}}
        >>> spec_to_json(lambda: None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        landscape.specs.SpecError: '<lambda>' (<lambda>) cannot be named by an import path ...
    """
    if isinstance(spec, ModelSpec):
        out = spec.to_json()
        return {"name": out["name"], "kwargs": _plain(_merge(out["kwargs"], kwargs, "spec"), "spec kwargs")}
    base: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        spec, base = _split_dict(spec, "model/data")
    merged = _merge(base, kwargs, "spec")
    if isinstance(spec, str):
        if not spec:
            raise SpecError("an empty string is not a model or data spec")
        name = spec
    elif isinstance(spec, functools.partial) and not spec.args:
        name = import_path_of(spec.func)
        merged = {**spec.keywords, **merged}
    elif _is_factory(spec) and not isinstance(spec, nn.Module):
        name = import_path_of(spec)
    else:
        raise SpecError(
            f"a {type(spec).__name__} object cannot be described by name for a worker; pass an "
            f"import path {_FORM} to a factory that makes it (or a zoo name)"
        )
    return {"name": name, "kwargs": _plain(merged, f"spec {name!r} kwargs")}


def default_search_paths(checkpoint: str | os.PathLike) -> list[Path]:
    """The folders searched for a checkpoint's import paths: its folder, that folder's parent,
    and the current directory.

    Example:
        >>> [p.name for p in default_search_paths("/runs/exp/sgd/epoch_1.pt")][:2]
        ['sgd', 'exp']
    """
    p = Path(checkpoint).absolute()
    folder = p if p.is_dir() else p.parent
    return [folder, folder.parent, Path.cwd()]

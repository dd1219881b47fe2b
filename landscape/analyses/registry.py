"""The analysis registry: adding an analysis to ``landscape analyze`` is one entry.

An analysis is a pure function ``fn(model, data, **options) -> xr.Dataset`` plus a frozen
options dataclass (:class:`landscape.config.Options`) whose fields are exactly ``fn``'s keyword
options. Register it with::

    register_analysis("hessian", "landscape.analyses.hessian:hessian_spectrum",
                      "landscape.analyses.hessian:HessianOptions")

``fn`` and ``options_cls`` may be objects or ``"module:attribute"`` strings; strings are imported
only when the analysis is used, so one missing or broken module does not break the others, and
worker processes (spawned, Slurm) can import the entry by itself.

:class:`DataOptions` says which data every analysis of a batch run sees; by default the training
data of the checkpoint (its config's ``dataset``, ``dataset_kwargs``, ``data_root``), split
``train``, no augmentation. The analysis' own ``n`` / ``max_samples`` apply on top of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from landscape.config import ConfigError, Options, check, did_you_mean


@dataclass(frozen=True)
class DataOptions(Options):
    """Where the analysed data come from (the ``[data]`` table of an analyze TOML file).

    ``dataset``: a :func:`landscape.data.get_dataset` name, or an import path
    ``"package.module:factory"`` to a function returning any data the analyses accept (called
    with ``split=`` when it takes one, and ``dataset_kwargs``) or to a data object; ``None`` =
    the checkpoint's training data set. ``dataset_kwargs``: ``None`` = the checkpoint's when
    ``dataset`` is the checkpoint's (else ``{}``). ``data_root``: ``None`` = the checkpoint's
    (zoo data sets only). ``split``: ``train`` (the sharpness protocol of SAM-ON Appendix B.10
    uses training examples) or ``test``. ``n``: keep the first ``n`` examples (``None`` = all).

    Example:
        >>> DataOptions.from_dict({"split": "test", "n": 256}).n
        256
        >>> DataOptions(dataset="mnist_1d")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        landscape.config.ConfigError: unknown data.dataset 'mnist_1d' (did you mean 'mnist1d'?); accepted: cifar10, cifar100, mnist1d, ..., or an import path 'package.module:factory'
    """

    dataset: str | None = None
    dataset_kwargs: dict | None = None
    data_root: str | None = None
    split: Literal["train", "test"] = "train"
    n: int | None = None

    def validate(self) -> None:
        check(self.n is None or (isinstance(self.n, int) and not isinstance(self.n, bool) and self.n >= 1),
              f"DataOptions.n must be a positive integer or None, got {self.n!r}")
        check(self.dataset_kwargs is None or isinstance(self.dataset_kwargs, dict),
              f"DataOptions.dataset_kwargs must be a table/dict, got {self.dataset_kwargs!r}")
        check(self.dataset is None or (isinstance(self.dataset, str) and self.dataset != ""),
              f"data.dataset must be a data set name or an import path, got {self.dataset!r}")
        if self.dataset is not None and ":" not in self.dataset:
            from landscape.data import dataset_names

            names = dataset_names()
            if self.dataset not in names:
                raise ConfigError(
                    f"unknown data.dataset {self.dataset!r}" + did_you_mean(self.dataset, names)
                    + f"; accepted: {', '.join(names)}, or an import path 'package.module:factory'"
                )

    def resolve(self, checkpoint_config: Mapping[str, Any] | None) -> dict[str, Any]:
        """The concrete data spec for one checkpoint: ``{dataset, dataset_kwargs, data_root, split, n}``.

        Raises ``ConfigError`` when neither these options nor the checkpoint name a data set
        (foreign checkpoints carry no training config).

        Example:
            >>> DataOptions().resolve({"dataset": "mnist1d", "dataset_kwargs": {"seed": 1}})["dataset_kwargs"]
            {'seed': 1}
        """
        cfg = dict(checkpoint_config or {})
        name = self.dataset or cfg.get("dataset")
        if not name:
            raise ConfigError(
                "the checkpoint holds no training config naming its data set (a foreign file?); "
                "set data.dataset (e.g. [data] dataset = \"mnist1d\" or \"mynets:make_data\" in the "
                "analyze config, --data on the command line, data= in Python)"
            )
        same = self.dataset is None or self.dataset == cfg.get("dataset")
        if self.dataset_kwargs is not None:
            kwargs = dict(self.dataset_kwargs)
        else:
            kwargs = dict(cfg.get("dataset_kwargs") or {}) if same else {}
        root = self.data_root if self.data_root is not None else cfg.get("data_root")
        return {"dataset": name, "dataset_kwargs": kwargs, "data_root": root, "split": self.split, "n": self.n}


@dataclass(frozen=True)
class ModelOptions(Options):
    """How to build the model a checkpoint's weights are loaded into (the ``[model]`` table).

    ``spec``: ``None`` = the spec stored in a landscape checkpoint; else a zoo model name or an
    import path ``"package.module:factory"`` (any callable returning an ``nn.Module``), needed
    for foreign checkpoints (a bare ``state_dict``, ``{"model_state_dict": ...}``, Lightning
    ``.ckpt``, ``.safetensors``). ``kwargs``: keyword arguments of the factory.

    Example:
        >>> ModelOptions.from_dict({"spec": "mynets:make_cnn", "kwargs": {"width": 8}}).kwargs
        {'width': 8}
    """

    spec: str | None = None
    kwargs: dict | None = None

    def validate(self) -> None:
        check(self.spec is None or (isinstance(self.spec, str) and self.spec != ""),
              f"model.spec must be a zoo model name or an import path 'package.module:factory', got {self.spec!r}")
        check(self.kwargs is None or (isinstance(self.kwargs, dict) and all(isinstance(k, str) for k in self.kwargs)),
              f"model.kwargs must be a table/dict, got {self.kwargs!r}")
        check(self.kwargs is None or self.spec is not None, "model.kwargs given without model.spec")


@dataclass(frozen=True)
class Analysis:
    """A resolved registry entry.

    ``needs_data``: whether ``fn`` reads the data (if not, ``data=None`` is passed and no data
    set is loaded). ``extra_inputs``: ``checkpoint -> dict`` of further keyword arguments taken
    from the checkpoint (e.g. ``{"momentum": ckpt.momentum()}`` for momentum analyses).
    """

    name: str
    fn: Callable[..., Any]
    options_cls: type[Options]
    needs_data: bool = True
    extra_inputs: Callable[[Any], dict[str, Any]] | None = None
    description: str = ""

    def options(self, d: Mapping[str, Any] | Options | None = None) -> Options:
        """Validated options from a dict (strict: unknown keys name the nearest valid one)."""
        if isinstance(d, Options):
            if not isinstance(d, self.options_cls):
                raise ConfigError(f"analysis {self.name!r} takes {self.options_cls.__name__}, got {type(d).__name__}")
            return d
        try:
            return self.options_cls.from_dict(dict(d or {}), where=self.name)
        except TypeError as e:  # a range check meeting a value of the wrong type ("0.1" > 0)
            raise ConfigError(
                f"options of {self.name!r}: a value has the wrong type ({e}); options: "
                f"{dict(d or {})!r}"
            ) from None


@dataclass(frozen=True)
class _Entry:
    fn: Any
    options_cls: Any
    needs_data: bool
    extra_inputs: Any
    description: str


_REGISTRY: dict[str, _Entry] = {}


def _resolve(obj: Any, what: str, name: str) -> Any:
    if not isinstance(obj, str):
        return obj
    from landscape.specs import SpecError, import_object

    try:
        return import_object(obj)
    except SpecError as e:
        raise ConfigError(f"analysis {name!r} is not available: {e} ({what})") from None


def import_spec(obj: Any) -> str | None:
    """``"module:qualname"`` for an importable top-level object (or the string itself), else None.

    The naming is :func:`landscape.specs.import_path_of` (``"__main__:fn"`` works in spawned
    local workers, which re-import the main script, not on Slurm).
    """
    if obj is None or isinstance(obj, str):
        return obj
    from landscape.specs import SpecError, import_path_of

    try:
        return import_path_of(obj)
    except SpecError:
        return None


def register_analysis(
    name: str,
    fn: Callable[..., Any] | str,
    options_cls: type[Options] | str,
    *,
    needs_data: bool = True,
    extra_inputs: Callable[[Any], dict[str, Any]] | str | None = None,
    description: str = "",
    replace: bool = False,
) -> None:
    """Make ``fn(model, data, **options_cls(...).to_dict()) -> xr.Dataset`` available by ``name``.

    Args:
        name: lower_snake name used on the CLI, in TOML tables and in result file names.
        fn: the analysis, or ``"module:function"`` (imported on first use).
        options_cls: its :class:`~landscape.config.Options` dataclass, or ``"module:Class"``.
        needs_data: ``False`` for analyses of the weights alone (no data set is loaded).
        extra_inputs: ``checkpoint -> dict`` of extra keyword arguments (or its import string).
        replace: allow re-registering an existing name.

    Example:
        >>> register_analysis("norm_params_copy", "landscape.analyses.norm_params:norm_params",
        ...                   "landscape.analyses.norm_params:NormParamsOptions", needs_data=False)
        >>> get_analysis("norm_params_copy").options({"bins": 4}).bins
        4
        >>> unregister_analysis("norm_params_copy")
    """
    if not name or not name.replace("_", "a").isalnum() or not name[0].isalpha() or name != name.lower():
        raise ValueError(f"analysis name {name!r} must be lower_snake (letters, digits, '_'), starting with a letter")
    if name in RESERVED_TABLES:
        raise ValueError(f"{name!r} is reserved for the [{name}] options table")
    if name in _REGISTRY and not replace:
        raise ValueError(f"analysis {name!r} is already registered (pass replace=True to override)")
    _REGISTRY[name] = _Entry(fn, options_cls, bool(needs_data), extra_inputs, description)


def unregister_analysis(name: str) -> None:
    _REGISTRY.pop(name, None)


def analysis_names() -> list[str]:
    """Registered names (nothing is imported)."""
    return sorted(_REGISTRY)


def _unknown(name: str) -> ConfigError:
    return ConfigError(
        f"unknown analysis {name!r}" + did_you_mean(name, _REGISTRY)
        + f"; accepted: {', '.join(analysis_names())}"
    )


def get_analysis(name: str) -> Analysis:
    """Resolve a registry entry (imports its module now). Unknown names raise ``ConfigError``."""
    if name not in _REGISTRY:
        raise _unknown(name)
    e = _REGISTRY[name]
    fn = _resolve(e.fn, "function", name)
    cls = _resolve(e.options_cls, "options class", name)
    if not (isinstance(cls, type) and issubclass(cls, Options)):
        raise ConfigError(f"analysis {name!r}: options class {cls!r} is not a landscape.config.Options dataclass")
    extra = _resolve(e.extra_inputs, "extra_inputs", name)
    return Analysis(name, fn, cls, e.needs_data, extra, e.description)


def entry_spec(name: str) -> dict[str, Any]:
    """A picklable description of an entry, so a fresh worker process can re-register it."""
    if name not in _REGISTRY:
        raise _unknown(name)
    e = _REGISTRY[name]
    return {
        "fn": import_spec(e.fn),
        "options_cls": import_spec(e.options_cls),
        "needs_data": e.needs_data,
        "extra_inputs": import_spec(e.extra_inputs),
    }


def ensure_registered(name: str, spec: Mapping[str, Any] | None) -> None:
    """Make this process' entry for ``name`` the one described by ``spec`` (:func:`entry_spec`).

    A spawned worker or Slurm job knows only the built-in entries; an analysis registered (or
    re-registered) by the user's script reaches it through ``spec``.
    """
    if not spec:
        return
    if name in _REGISTRY and entry_spec(name) == dict(spec):
        return
    if spec.get("fn") is None or spec.get("options_cls") is None:
        raise ConfigError(
            f"analysis {name!r} was registered with a function that cannot be imported by name "
            "(a lambda, a local function or one defined in __main__), so a worker process cannot "
            "run it; register a function defined at module level in an importable module"
        )
    register_analysis(name, spec["fn"], spec["options_cls"], needs_data=spec.get("needs_data", True),
                      extra_inputs=spec.get("extra_inputs"), replace=True)


def parse_analyses(analyses: str | Iterable[str]) -> list[str]:
    """``"hessian,sharpness"`` or a list -> validated names, duplicates removed, order kept."""
    items = analyses.split(",") if isinstance(analyses, str) else list(analyses)
    names: list[str] = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        if item not in _REGISTRY:
            raise _unknown(item)
        if item not in names:
            names.append(item)
    if not names:
        raise ConfigError(f"no analysis given; accepted: {', '.join(analysis_names())}")
    return names


RESERVED_TABLES = ("data", "model")


def resolve_options(
    analyses: Iterable[str],
    options: Mapping[str, Any] | None = None,
    *,
    loss: str | None = None,
) -> tuple[dict[str, Options], DataOptions]:
    """Validate per-analysis options and the data options of a batch run.

    ``options`` maps analysis names (and ``"data"``, ``"model"``) to dicts or Options objects,
    e.g. the parsed TOML ``{"data": {"n": 512}, "hessian": {"top_k": 3}}``. Tables of registered
    analyses that are not requested are allowed (one config file for several runs) and still
    checked for unknown keys when their module imports; unknown table names raise. ``loss``
    (``"ce"``, ``"mse"`` or an import path) is put into the ``loss`` option of every analysis
    that reads data. Conflicts between options are reported here, before any work: an analysis
    whose ``required_samples()`` exceeds ``data.n``.

    Example:
        >>> opts, data = resolve_options(["norm_params"], {"norm_params": {"bins": 5}})
        >>> opts["norm_params"].bins, data.split
        (5, 'train')
    """
    options = dict(options or {})
    for key in options:
        if key not in RESERVED_TABLES and key not in _REGISTRY:
            raise ConfigError(
                f"unknown options table {key!r}" + did_you_mean(key, list(_REGISTRY) + list(RESERVED_TABLES))
                + f"; accepted: {', '.join(RESERVED_TABLES)}, {', '.join(analysis_names())}"
            )
    data = options.get("data")
    data = data if isinstance(data, DataOptions) else DataOptions.from_dict(data, where="data")
    wanted = list(analyses)
    resolved = {name: get_analysis(name).options(options.get(name)) for name in wanted}
    if loss is not None:
        for name in wanted:
            a = get_analysis(name)
            if not a.needs_data:
                continue
            if "loss" not in {f.name for f in dataclasses.fields(a.options_cls)}:
                raise ConfigError(f"analysis {name!r} has no 'loss' option, so loss={loss!r} cannot be applied to it")
            resolved[name] = a.options({**resolved[name].to_dict(), "loss": loss})
    for name in options:
        if name not in (*RESERVED_TABLES, *wanted):
            try:
                get_analysis(name).options(options[name])
            except ConfigError as e:
                if "is not available" not in str(e):
                    raise
    if data.n is not None:
        for name, opts in resolved.items():
            required = getattr(opts, "required_samples", None)
            need = required() if callable(required) else None
            if need is not None and need > data.n:
                raise ConfigError(
                    f"options conflict: {name} needs {need} examples but data.n={data.n} keeps only "
                    f"{data.n}; raise data.n to at least {need} or lower {name}'s sample count"
                )
    return resolved, data


def model_options(options: Mapping[str, Any] | None) -> ModelOptions:
    """The ``[model]`` table of an options mapping (validated; empty when absent)."""
    m = dict(options or {}).get("model")
    return m if isinstance(m, ModelOptions) else ModelOptions.from_dict(m, where="model")


# Built-in analyses. Lazily imported: a missing module only disables its own entry.
register_analysis(
    "hessian", "landscape.analyses.hessian:hessian_spectrum", "landscape.analyses.hessian:HessianOptions",
    description="top Hessian eigenvalues, trace and spectral density (Lanczos, Hutch++, SLQ)",
)
register_analysis(
    "sharpness", "landscape.analyses.sharpness:sharpness", "landscape.analyses.sharpness:SharpnessOptions",
    description="adaptive worst-case / average m-sharpness (SAM-ON Eq. 6, Appendix B.10)",
)
register_analysis(
    "momentum", "landscape.analyses.momentum:momentum_curvature", "landscape.analyses.momentum:MomentumOptions",
    extra_inputs="landscape.analyses.momentum:momentum_from_checkpoint",
    description="curvature and slope along the momentum, gradient and random directions (MSAM A.4)",
)
register_analysis(
    "slice", "landscape.analyses.slices:slice_analysis", "landscape.analyses.slices:SliceOptions",
    extra_inputs="landscape.analyses.slices:slice_inputs",
    description="loss and accuracy on a 1-D/2-D slice along random, momentum, gradient or Hessian-eigenvector "
                "directions (Li et al. 2018)",
)
register_analysis(
    "norm_params", "landscape.analyses.norm_params:norm_params", "landscape.analyses.norm_params:NormParamsOptions",
    needs_data=False,
    description="per-layer statistics and histograms of normalization gamma/beta",
)

__all__ = [
    "Analysis",
    "DataOptions",
    "ModelOptions",
    "analysis_names",
    "ensure_registered",
    "entry_spec",
    "get_analysis",
    "import_spec",
    "model_options",
    "parse_analyses",
    "register_analysis",
    "resolve_options",
    "unregister_analysis",
]

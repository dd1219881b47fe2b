"""Frozen option dataclasses with range checks and a strict ``from_dict``.

Every options object in landscape (training, each analysis) is a frozen dataclass built on
:class:`Options`: ``from_dict`` rejects unknown keys and names the nearest valid one, nested
dataclasses are rebuilt from nested dicts, and ``to_json`` gives the ``config_json`` string
stored in checkpoints and result files.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T", bound="Options")


class ConfigError(ValueError):
    """An option that is unknown, of the wrong type or out of range."""


def did_you_mean(word: Any, choices: Iterable[Any]) -> str:
    """The " (did you mean 'x'?)" suffix of an error message, or "" when nothing is close.

    The one place the suggestion is made: unknown options, names and values all use it.

    Example:
        >>> did_you_mean("epoch", ["epochs", "lr"])
        " (did you mean 'epochs'?)"
        >>> did_you_mean("zzz", ["epochs", "lr"])
        ''
    """
    hint = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _tomllib():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def toml_value(text: str) -> Any:
    """One value as TOML reads it (``3``, ``0.1``, ``[1, 2]``, ``true``, ``"x"``); a bare word that
    is not TOML is the string itself (``--set data.split=test``).

    Example:
        >>> toml_value("[0.1, 0.2]"), toml_value("3"), toml_value("test")
        ([0.1, 0.2], 3, 'test')
    """
    text = text.strip()
    try:
        return _tomllib().loads(f"v = {text}")["v"]
    except Exception:  # noqa: BLE001 - a bare word is a string
        return text


def read_toml(path: str | Path) -> dict[str, Any]:
    r"""Parse a TOML file; every error names the file.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "c.toml")
        >>> _ = open(p, "w").write('epochs = 2\n[sam]\nrho = 0.1\n')
        >>> read_toml(p)
        {'epochs': 2, 'sam': {'rho': 0.1}}
    """
    tomllib = _tomllib()
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a TOML config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text (UTF-8) TOML file: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


DEVICES_ACCEPTED = "auto, cpu, cuda, cuda:N"


def check_device(name: Any, where: str = "device") -> None:
    """Raise ``ConfigError`` unless ``name`` is auto, cpu, cuda or cuda:N."""
    ok = isinstance(name, str) and (
        name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    )
    if not ok:
        raise ConfigError(f"{where}={name!r} is not accepted; accepted: {DEVICES_ACCEPTED}")


def resolve_device(name: str = "auto"):
    """The ``torch.device`` for auto/cpu/cuda/cuda:N (auto: CUDA when present); the one resolver.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch  # lazily: config is imported by code that never needs torch

    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s) here; "
                f"accepted: cuda:0..cuda:{torch.cuda.device_count() - 1}, cpu, auto"
            )
    return torch.device(name)


def _nested_type(tp: Any) -> type | None:
    """The Options subclass inside ``tp`` (also inside ``X | None``), if any."""
    if isinstance(tp, type) and issubclass(tp, Options):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            if isinstance(a, type) and issubclass(a, Options):
                return a
    return None


def _literal_values(tp: Any) -> tuple:
    """The values of the ``Literal`` in ``tp`` (also inside ``X | None``), else ()."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(v for a in typing.get_args(tp) for v in _literal_values(a))
    return ()


_NO = object()  # _conform's "does not fit"


def _conform(value: Any, tp: Any, wrap: bool = True) -> Any:
    """``value`` as the type ``tp`` accepts it (int widened to float, list to tuple), or ``_NO``.

    Typing constructs not listed here (callables, Any, torch types...) are not checked.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        # exact types first (an int stays an int in int | float), a value wrapped in a tuple last
        for w in (False, True):
            for a in sorted(args, key=lambda a: a is float):
                out = _conform(value, a, w)
                if out is not _NO:
                    return out
        return _NO
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in args) else _NO
    if tp is type(None):
        return value if value is None else _NO
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                return _NO
        return _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    if origin is tuple:
        homogeneous = len(args) == 2 and args[1] is Ellipsis
        if homogeneous and wrap and not isinstance(value, (list, tuple)):
            value = [value]  # one radius for a tuple of radii
        if not isinstance(value, (list, tuple)) or (not homogeneous and args and len(value) != len(args)):
            return _NO
        elems = [args[0]] * len(value) if homogeneous else list(args) or [Any] * len(value)
        out = tuple(_conform(v, t) for v, t in zip(value, elems))
        return _NO if any(v is _NO for v in out) else out
    if origin in (list, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return _NO
        elem = args[0] if args else Any
        out = [_conform(v, elem) for v in value]
        return _NO if any(v is _NO for v in out) else (out if origin is list or isinstance(value, list) else tuple(out))
    if tp is dict or origin in (dict, Mapping):
        return value if isinstance(value, Mapping) else _NO
    if isinstance(tp, type) and issubclass(tp, Options):
        return value if isinstance(value, tp) else _NO
    return value


def _describe(tp: Any) -> str:
    """What a type accepts, in words (for error messages)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return ", ".join(map(repr, args))
    if isinstance(tp, type) and issubclass(tp, Options):
        return f"a {tp.__name__} table"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{_describe(args[0])} or a list of them"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin in (list, Sequence):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    names = {type(None): "None", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a table (dict)"}
    if tp in names:
        return names[tp]
    if origin in (dict, Mapping):
        return "a table (dict)"
    return getattr(tp, "__name__", str(tp))


@dataclass(frozen=True)
class Options:
    """Base class: strict construction from dicts, JSON round trip."""

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any] | None, *, where: str = "") -> T:
        """Build from a dict; unknown keys raise ``ConfigError`` naming the nearest valid key.

        Example:
            >>> TrainConfig.from_dict({"epochs": 2}).epochs
            2
            >>> TrainConfig.from_dict({"epoch": 2})
            Traceback (most recent call last):
            ...
            landscape.config.ConfigError: unknown option 'epoch' in TrainConfig (did you mean 'epochs'?)
        """
        d = dict(d or {})
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        prefix = f"{where}." if where else ""
        d = cls._migrate(d)
        for key in d:
            if key not in fields:
                raise ConfigError(f"unknown option {prefix + key!r} in {cls.__name__}" + did_you_mean(key, fields))
        kwargs = {}
        for key, value in d.items():
            sub = _nested_type(hints[key])
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value, where=prefix + key)
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except ConfigError as e:
            # name the table the values came from (e.g. "hessian: HessianOptions.tol=...")
            if where and not str(e).startswith(f"{where}:"):
                raise ConfigError(f"{where}: {e}") from None
            raise

    def __post_init__(self) -> None:
        """Nested tables to dataclasses, ``_normalize``, strict type checks, then ``validate``.

        Every field is checked against its type hint, so every options class gets the same
        rules: bool is not int, no strings for numbers or booleans, an int is accepted (and
        stored) as a float, lists become tuples of the right length and element types, a
        single value stands for a one-element variable-length tuple, ``Literal`` values must
        be listed, ``X | None`` accepts None. The message names the option, the value and what
        is accepted.
        """
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            sub = _nested_type(hints[f.name])
            if sub is not None and isinstance(value, dict):
                # TrainConfig(sam={"rho": 0.1}) means TrainConfig(sam=SAMConfig(rho=0.1))
                object.__setattr__(self, f.name, sub.from_dict(value, where=f.name))
        self._normalize()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            conformed = _conform(value, hints[f.name])
            if conformed is _NO:
                allowed = _literal_values(hints[f.name]) or ()
                raise ConfigError(
                    f"{type(self).__name__}.{f.name}={value!r} is not accepted" + did_you_mean(value, allowed)
                    + f"; accepted: {_describe(hints[f.name])}"
                )
            if conformed is not value:
                object.__setattr__(self, f.name, conformed)
        self.validate()

    @classmethod
    def _migrate(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Rewrite keys of older versions (stored configs) into today's; subclasses override."""
        return d

    def _normalize(self) -> None:
        """Rewrite accepted alternative spellings into the one stored form (before ``validate``)."""

    def validate(self) -> None:
        """Range checks; subclasses raise ``ConfigError``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=list)

    def replace(self: T, **changes) -> T:
        return dataclasses.replace(self, **changes)


def field_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of an options class' docstring, by field name.

    The one place an option is described: ``landscape train --help`` shows these lines.

    Example:
        >>> field_docs(MSAMConfig)["warmup_no_rho"]
        'rho=0 during the warm-up epochs'
    """
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return docs
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            break
        width = len(line) - len(line.lstrip())
        indent = indent if indent is not None else width
        if width < indent:
            break
        name, sep, text = line.strip().partition(": ")
        if width == indent and sep:
            docs[name] = text
    return docs


def check(cond: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class SAMConfig(Options):
    """SAM-family options (SAM-ON Table 9 / Eq. 5; SAM Section 4.1 for ``m``).

    Attributes:
        variant: the perturbation model: sam, asam-el-l2, asam-el-l2-orig, asam-el-linf, asam-layer-l2, fisher
        rho: radius of the ascent step (in the variant's normalized norm)
        mask: parameters perturbed: all, norm (SAM-ON), no-norm, random, blocks, or a group spec
        blocks: stages for mask=blocks, e.g. B3 or B2+B3
        m: m-sharpness chunk size (SAM Section 4.1); must divide batch_size
        eta: eta of the perturbation model (the variant's default when unset)
        mask_seed: seed of mask=random
        freeze_bn_stats: leave BatchNorm running statistics untouched in the second pass
    """

    variant: Literal["sam", "asam-el-l2", "asam-el-l2-orig", "asam-el-linf", "asam-layer-l2", "fisher"] = "sam"
    rho: float = 0.05
    mask: str = "all"
    blocks: str = ""
    m: int | None = None
    eta: float | None = None
    mask_seed: int = 0
    freeze_bn_stats: bool = True

    def validate(self) -> None:
        check(self.rho >= 0, f"SAMConfig.rho must be >= 0, got {self.rho}")
        check(self.m is None or self.m >= 1, f"SAMConfig.m must be a positive batch-chunk size or None, got {self.m}")
        check(self.mask != "blocks" or bool(self.blocks), "SAMConfig.mask='blocks' needs blocks='B3' or similar")


@dataclass(frozen=True)
class MSAMConfig(Options):
    """Momentum-SAM options (MSAM Section 2.4, Algorithm 1; default rho=3 as in its code).

    This class holds MSAM's one rho default.

    Attributes:
        rho: shift length along the normalized momentum (3 as in the paper; ~0.3 for small models)
        warmup_no_rho: rho=0 during the warm-up epochs
        recalibrate_bn: re-estimate BatchNorm statistics at unshifted weights before eval/save
    """

    rho: float = 3.0
    warmup_no_rho: bool = False
    recalibrate_bn: bool = True

    def validate(self) -> None:
        check(self.rho >= 0, f"MSAMConfig.rho must be >= 0, got {self.rho}")


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig(Options):
    """Everything a training run needs; stored in every checkpoint as ``config``.

    The optimizer is ``optimizer`` (sgd or adamw); a sharpness-aware optimizer wraps it when its
    table is set, and that is the only switch: ``sam=SAMConfig(...)`` for the SAM family,
    ``msam=MSAMConfig(...)`` for Momentum-SAM (at most one of them). ``optimizer="msam"``
    (with ``base_optimizer``) is the spelling of earlier versions and is read as
    ``optimizer=base_optimizer, msam=MSAMConfig()``; stored configs always have the new form.

    Attributes:
        dataset: mnist1d, synthetic, cifar10, cifar100 (or a registered name)
        dataset_kwargs: options of the data set, e.g. num_samples=600
        data_root: data folder (CIFAR: the folder holding cifar-10-batches-py)
        augment: CIFAR random crop and flip on training batches
        model: a name of landscape.models.model_names()
        model_kwargs: options of the model, e.g. width=32 depth=2
        optimizer: the base optimizer: sgd or adamw (msam: the earlier spelling of msam on base_optimizer)
        base_optimizer: earlier spelling: the base of optimizer=msam (sgd or adamw)
        lr: peak learning rate
        momentum: SGD momentum
        nesterov: Nesterov momentum (SGD)
        weight_decay: weight decay (coupled for SGD, decoupled for AdamW)
        betas: AdamW betas
        epochs: number of epochs (may be raised to extend a run)
        batch_size: training batch size
        warmup_epochs: linear learning-rate warm-up, in epochs
        schedule: cosine (decay to 0 after warm-up) or constant
        label_smoothing: cross-entropy label smoothing
        sam: SAM-family options; setting them trains with SAM (SAMConfig)
        msam: Momentum-SAM options; setting them trains with MSAM (MSAMConfig)
        precision: fp32, bf16 (autocast) or fp16 (autocast and a gradient scaler)
        channels_last: channels-last memory format for image models (faster convolutions on GPUs)
        compile: torch.compile the model (checked against eager on the first batch)
        ddp_perturbation: under torchrun: local (each replica its own SAM perturbation) or global
        sync_bn: under torchrun: SyncBatchNorm instead of per-replica BatchNorm statistics
        seed: seed of initialization, data order and augmentation
        out: run folder
        save_every: write epoch_NNNN.pt every this many epochs (and after the last)
        save_every_steps: also write step_NNNNNNNN.pt every this many steps (dense early checkpoints)
        diagnostics_every: record the step's loss and the SAM/MSAM statistics in run.json every this many steps
        device: auto, cpu, cuda, cuda:N
        resume: continue the run in out from its last.pt
        threads: torch CPU threads (default: torch's)

    Example:
        >>> cfg = TrainConfig(dataset="synthetic", model="mlp", epochs=2, out="/tmp/run")
        >>> cfg.optimizer, cfg.sam, cfg.msam
        ('sgd', None, None)
        >>> old = TrainConfig(optimizer="msam", base_optimizer="adamw")
        >>> old.optimizer, old.msam.rho, old.base_optimizer
        ('adamw', 3.0, None)
    """

    dataset: str = "mnist1d"
    dataset_kwargs: dict = field(default_factory=dict)
    data_root: str | None = None
    augment: bool = False
    model: str = "resnet1d"
    model_kwargs: dict = field(default_factory=dict)
    optimizer: Literal["sgd", "adamw", "msam"] = "sgd"
    base_optimizer: Literal["sgd", "adamw"] | None = None
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: int = 10
    batch_size: int = 128
    warmup_epochs: float = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = 0.0
    sam: SAMConfig | None = None
    msam: MSAMConfig | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    ddp_perturbation: Literal["local", "global"] = "local"
    sync_bn: bool = False
    seed: int = 0
    out: str = "checkpoints/run"
    save_every: int = 1
    save_every_steps: int | None = None
    diagnostics_every: int | None = None
    device: str = "auto"
    resume: bool = True
    threads: int | None = None

    @classmethod
    def _migrate(cls, d: dict[str, Any]) -> dict[str, Any]:
        # Configs stored before base_optimizer became a legacy alias carry base_optimizer="sgd"
        # beside optimizer="sgd"/"adamw", where it never had an effect.
        if d.get("optimizer") != "msam" and "base_optimizer" in d:
            d = {k: v for k, v in d.items() if k != "base_optimizer"}
        return d

    def _normalize(self) -> None:
        if self.optimizer == "msam" and self.base_optimizer in (None, "sgd", "adamw"):
            # the earlier spelling of MSAM (see the class docstring)
            check(self.sam is None, "TrainConfig: choose either sam=... or optimizer='msam', not both")
            object.__setattr__(self, "optimizer", self.base_optimizer or "sgd")
            object.__setattr__(self, "msam", self.msam or MSAMConfig())
            object.__setattr__(self, "base_optimizer", None)
        elif self.optimizer != "msam" and self.base_optimizer is not None and self.base_optimizer != self.optimizer:
            raise ConfigError(
                f"TrainConfig.base_optimizer={self.base_optimizer!r} only applies with the legacy "
                f"optimizer='msam'; the base optimizer is optimizer={self.optimizer!r}. Use "
                "optimizer='sgd'|'adamw' and msam={...} (or sam={...}) for a sharpness-aware one"
            )
        elif self.optimizer != "msam":
            object.__setattr__(self, "base_optimizer", None)

    @property
    def sharpness_aware(self) -> Literal["sam", "msam"] | None:
        """Which wrapper is on: "sam", "msam" or None (plain ``optimizer``)."""
        return "sam" if self.sam is not None else "msam" if self.msam is not None else None

    def validate(self) -> None:
        check(self.lr > 0, f"TrainConfig.lr must be > 0, got {self.lr}")
        check(self.epochs >= 1, f"TrainConfig.epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
        check(0 <= self.momentum < 1, f"TrainConfig.momentum must be in [0, 1), got {self.momentum}")
        check(self.weight_decay >= 0, f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.label_smoothing < 1, f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check(0 <= self.warmup_epochs <= self.epochs, f"TrainConfig.warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        check(self.save_every >= 1, f"TrainConfig.save_every must be >= 1, got {self.save_every}")
        for name in ("save_every_steps", "diagnostics_every", "threads"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"TrainConfig.{name} must be >= 1 or None, got {value}")
        check(0 <= self.seed < 2**63, f"TrainConfig.seed must be in [0, 2**63), got {self.seed}")
        check_device(self.device, "TrainConfig.device")
        check(not (self.sam is not None and self.msam is not None),
              "TrainConfig: choose either sam=... or msam=... (optimizer='msam'), not both")
        check(self.nesterov is False or self.momentum > 0, "TrainConfig.nesterov needs momentum > 0")
        check(
            self.sam is None or self.sam.m is None or self.batch_size % self.sam.m == 0,
            f"TrainConfig: sam.m={self.sam.m if self.sam else None} must divide batch_size={self.batch_size} "
            "(m-sharpness splits each batch into chunks of m)",
        )

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
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

T = TypeVar("T", bound="Options")


class ConfigError(ValueError):
    """An option that is unknown, of the wrong type or out of range."""


def _nested_type(tp: Any) -> type | None:
    """The Options subclass inside ``tp`` (also inside ``X | None``), if any."""
    if isinstance(tp, type) and issubclass(tp, Options):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            if isinstance(a, type) and issubclass(a, Options):
                return a
    return None


def _literal_values(tp: Any) -> tuple | None:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    return None


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
        for key in d:
            if key not in fields:
                hint = difflib.get_close_matches(key, fields, n=1)
                raise ConfigError(
                    f"unknown option {prefix + key!r} in {cls.__name__}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                )
        kwargs = {}
        for key, value in d.items():
            sub = _nested_type(hints[key])
            if sub is not None and isinstance(value, dict):
                value = sub.from_dict(value, where=prefix + key)
            elif isinstance(value, list) and typing.get_origin(hints[key]) is tuple:
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            sub = _nested_type(hints[f.name])
            if sub is not None and isinstance(value, dict):
                # TrainConfig(sam={"rho": 0.1}) means TrainConfig(sam=SAMConfig(rho=0.1))
                value = sub.from_dict(value, where=f.name)
                object.__setattr__(self, f.name, value)
            allowed = _literal_values(hints[f.name])
            if allowed is not None and value not in allowed:
                hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
                raise ConfigError(
                    f"{type(self).__name__}.{f.name}={value!r} is not accepted"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; accepted: {', '.join(map(repr, allowed))}"
                )
        self.validate()

    def validate(self) -> None:
        """Range checks; subclasses raise ``ConfigError``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=list)

    def replace(self: T, **changes) -> T:
        return dataclasses.replace(self, **changes)


def check(cond: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``cond``."""
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class SAMConfig(Options):
    """SAM-family options (SAM-ON Table 9 / Eq. 5; SAM Section 4.1 for ``m``).

    ``variant``: sam, asam-el-l2, asam-el-l2-orig, asam-el-linf, asam-layer-l2, fisher.
    ``mask``: all, norm (SAM-ON), no-norm, random, blocks (with ``blocks``, e.g. "B3" or
    "B2+B3"), or any parameter-group spec of :mod:`landscape.params`.
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
    """Momentum-SAM options (MSAM Section 2.4, Algorithm 1; default rho=3 as in its code)."""

    rho: float = 3.0
    warmup_no_rho: bool = False
    recalibrate_bn: bool = True

    def validate(self) -> None:
        check(self.rho >= 0, f"MSAMConfig.rho must be >= 0, got {self.rho}")


@dataclass(frozen=True)
class TrainConfig(Options):
    """Everything a training run needs; stored in every checkpoint as ``config``.

    Example:
        >>> cfg = TrainConfig(dataset="synthetic", model="mlp", epochs=2, out="/tmp/run")
        >>> cfg.optimizer
        'sgd'
    """

    dataset: str = "mnist1d"
    dataset_kwargs: dict = field(default_factory=dict)
    data_root: str | None = None
    augment: bool = False
    model: str = "resnet1d"
    model_kwargs: dict = field(default_factory=dict)
    optimizer: Literal["sgd", "adamw", "msam"] = "sgd"
    base_optimizer: Literal["sgd", "adamw"] = "sgd"
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
    seed: int = 0
    out: str = "checkpoints/run"
    save_every: int = 1
    device: str = "auto"
    resume: bool = True
    threads: int | None = None

    def validate(self) -> None:
        check(self.lr > 0, f"TrainConfig.lr must be > 0, got {self.lr}")
        check(self.epochs >= 1, f"TrainConfig.epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
        check(0 <= self.momentum < 1, f"TrainConfig.momentum must be in [0, 1), got {self.momentum}")
        check(self.weight_decay >= 0, f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.label_smoothing < 1, f"TrainConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check(0 <= self.warmup_epochs <= self.epochs, f"TrainConfig.warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        check(self.save_every >= 1, f"TrainConfig.save_every must be >= 1, got {self.save_every}")
        check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"TrainConfig.device={self.device!r} is not accepted; accepted: auto, cpu, cuda, cuda:N",
        )
        check(not (self.sam is not None and self.optimizer == "msam"),
              "TrainConfig: choose either sam=... or optimizer='msam', not both")
        check(self.nesterov is False or self.momentum > 0, "TrainConfig.nesterov needs momentum > 0")
        check(
            self.sam is None or self.sam.m is None or self.batch_size % self.sam.m == 0,
            f"TrainConfig: sam.m={self.sam.m if self.sam else None} must divide batch_size={self.batch_size} "
            "(m-sharpness splits each batch into chunks of m)",
        )

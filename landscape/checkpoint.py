"""Checkpoint format, save and load (``weights_only=True``), foreign state_dicts.

Format (one file per checkpoint, ``torch.save`` of primitives and tensors only)::

    {"format_version": 1,
     "model": {"name": str, "kwargs": dict},   # rebuildable with build_model
     "model_state": state_dict,                 # unwrapped: no "module." / "_orig_mod."
     "optimizer": {"name": str, "kwargs": dict},
     "optimizer_state": base optimizer state_dict (holds momentum_buffer / exp_avg),
     "param_names": [str],                      # maps optimizer state indices to names
     "step": int, "epoch": int, "metrics": {str: float},
     "config": dict, "rng": {...}, "versions": {...}}

Loading never executes code from the file: ``torch.load(..., weights_only=True)`` refuses any
pickle that would need a global outside torch's allow-list.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.atomic import atomic_write
from landscape.models import build_model

FORMAT_VERSION = 1
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(Exception):
    """A checkpoint file that cannot be read or does not fit the model; names file and cause."""


def _versions() -> dict[str, str]:
    from landscape import __version__

    return {"landscape": str(__version__), "torch": str(torch.__version__)}


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Remove DataParallel/DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for pre in WRAPPER_PREFIXES:
                if k.startswith(pre):
                    k = k[len(pre) :]
                    changed = True
        out[k] = v
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DataParallel/DDP/``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`landscape.atomic.atomic_write` (never a partial file)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    epoch: int = 0,
    metrics: dict[str, float] | None = None,
    config: dict[str, Any] | None = None,
    model_spec: dict[str, Any] | None = None,
    optimizer_spec: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (a killed process never leaves a partial file).

    Args:
        path: destination ``.pt`` file.
        model: the network (wrappers are removed).
        optimizer: its base optimizer's ``state_dict`` is stored (SAM/MSAM wrappers expose
            ``base_optimizer``), so momentum buffers travel with the weights.
        step, epoch, metrics, config: training provenance.
        model_spec: ``{"name", "kwargs"}``; defaults to the ``landscape_spec`` that
            :func:`landscape.models.build_model` attaches.

    Example:
        >>> import tempfile, os
        >>> from landscape.atomic import atomic_write
from landscape.models import build_model
        >>> m = build_model("mlp", input_shape=(4,), num_classes=2, width=8)
        >>> p = save_checkpoint(os.path.join(tempfile.mkdtemp(), "a.pt"), m, step=3)
        >>> load_checkpoint(p).step
        3
    """
    model = unwrap(model)
    spec = model_spec or getattr(model, "landscape_spec", None)
    if spec is None:
        raise CheckpointError(
            f"{path}: cannot record how to rebuild {type(model).__name__}; build it with "
            "landscape.models.build_model or pass model_spec={'name': ..., 'kwargs': {...}}"
        )
    opt_state = None
    if optimizer is not None:
        base = getattr(optimizer, "base_optimizer", optimizer)
        opt_state = base.state_dict()
    obj = {
        "format_version": FORMAT_VERSION,
        "model": {"name": spec["name"], "kwargs": _plain(spec.get("kwargs", {}))},
        "model_state": {k: v.detach().cpu() for k, v in strip_prefixes(model.state_dict()).items()},
        "optimizer": optimizer_spec,
        "optimizer_state": opt_state,
        "param_names": [n for n, _ in model.named_parameters()],
        "step": int(step),
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "config": _plain(config or {}),
        "rng": rng or {},
        "versions": _versions(),
    }
    return atomic_save(obj, path)


def _plain(obj: Any) -> Any:
    """Primitives only (tuples become lists), so ``weights_only`` loading accepts the file."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    raise CheckpointError(f"value of type {type(obj).__name__} cannot be stored in a checkpoint config")


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``model`` is rebuilt and in eval mode."""

    path: Path
    model: nn.Module
    model_spec: dict[str, Any] | None
    config: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    optimizer_spec: dict[str, Any] | None = None
    param_names: list[str] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def run(self) -> str:
        """Run name: the folder the checkpoint lies in."""
        return self.path.resolve().parent.name

    def momentum(self) -> dict[str, torch.Tensor]:
        """Momentum buffers keyed by parameter name (SGD ``momentum_buffer``; AdamW ``exp_avg``).

        Raises ``CheckpointError`` when the file holds no optimizer state or no buffers (a
        foreign state_dict, or SGD without momentum).
        """
        state = (self.optimizer_state or {}).get("state")
        if not state:
            raise CheckpointError(
                f"{self.path}: holds no optimizer state, so no momentum buffers; momentum-direction "
                "analyses need a checkpoint written by the landscape trainer (or any file with "
                "'optimizer_state' holding SGD 'momentum_buffer' or AdamW 'exp_avg')"
            )
        names = self.param_names or [n for n, _ in self.model.named_parameters()]
        order = [i for g in self.optimizer_state.get("param_groups", []) for i in g["params"]]
        if len(order) != len(names):
            raise CheckpointError(
                f"{self.path}: optimizer state covers {len(order)} parameters but the model has "
                f"{len(names)}; cannot map momentum buffers to parameter names"
            )
        out = {}
        for idx, name in zip(order, names):
            s = state.get(idx, state.get(str(idx), {}))
            buf = s.get("momentum_buffer", s.get("exp_avg"))
            if buf is not None:
                out[name] = buf
        if not out:
            raise CheckpointError(
                f"{self.path}: optimizer state has no 'momentum_buffer' or 'exp_avg' entries "
                "(was it trained with momentum=0?)"
            )
        return out


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write; the refusal below is the news.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch wraps the reason in advice about weights_only=False; keep only the reason.
        text = str(e).split("trusted source.", 1)[-1].split("Check the documentation", 1)[0]
        text = text.split("WeightsUnpickler error:", 1)[-1].split("Please use `torch.serialization", 1)[0]
        msg = " ".join(text.split()).rstrip(".") or type(e).__name__
        if re.search(r"\bglobal\b", msg, re.I) or _imports_globals(path):
            raise CheckpointError(
                f"{path}: refused to load: the file would need code execution to unpickle "
                f"(weights_only=True rejected it: {msg}); only tensors and primitives are accepted"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {msg}") from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError, io.UnsupportedOperation) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): {type(e).__name__}: {e}") from None
    except Exception as e:  # noqa: BLE001 - any other failure of the reader is still "unreadable"
        raise CheckpointError(f"{path}: not a readable checkpoint: {type(e).__name__}: {e}") from None


def _imports_globals(path: Path) -> bool:
    """True when a raw (non-zip) pickle names globals, i.e. loading it would import and call code.

    Read with ``pickletools.genops``, which parses opcodes without executing any.
    """
    if zipfile.is_zipfile(path):
        return False
    try:
        with open(path, "rb") as f:
            return any(op.name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ") for op, _, _ in pickletools.genops(f))
    except Exception:  # noqa: BLE001 - not a parsable pickle: corrupt, not malicious
        return False


def _load_state(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    state = strip_prefixes(state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model {type(model).__name__}: {e}") from None


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | dict[str, Any] | None = None,
) -> Checkpoint:
    """Load a landscape checkpoint or a foreign state_dict.

    Args:
        path: a ``.pt``/``.pth`` file.
        model: for foreign files (a bare ``state_dict`` or a dict with ``state_dict`` /
            ``model_state_dict`` / ``model`` / ``net`` entries): a spec
            ``{"name": "resnet18_cifar", "kwargs": {}}`` or an ``nn.Module`` to load into (it is
            loaded in place and put in eval mode). For landscape files it overrides the stored
            spec.

    Returns:
        A :class:`Checkpoint`; ``.model`` is in eval mode.

    Raises:
        CheckpointError: naming the file and the cause (missing, corrupt, truncated, a pickle
            that would execute code, weights that do not fit).

    Example:
        >>> ckpt = load_checkpoint("checkpoints/sgd/last.pt")  # doctest: +SKIP
        >>> ckpt.model, ckpt.epoch, ckpt.metrics["test_acc"]  # doctest: +SKIP
    """
    path = Path(path)
    obj = _read(path)
    if isinstance(obj, dict) and "model_state" in obj and "format_version" in obj:
        if obj["format_version"] > FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: format_version {obj['format_version']} is newer than this landscape "
                f"understands ({FORMAT_VERSION}); upgrade landscape"
            )
        spec = obj.get("model")
        net = _build(model if model is not None else spec, path)
        _load_state(net, obj["model_state"], path)
        net.eval()
        return Checkpoint(
            path=path,
            model=net,
            model_spec=spec if not isinstance(model, nn.Module) else getattr(net, "landscape_spec", spec),
            config=obj.get("config", {}),
            step=int(obj.get("step", 0)),
            epoch=int(obj.get("epoch", 0)),
            metrics=dict(obj.get("metrics", {})),
            optimizer_state=obj.get("optimizer_state"),
            optimizer_spec=obj.get("optimizer"),
            param_names=obj.get("param_names"),
            raw=obj,
        )
    state = _foreign_state(obj, path)
    if model is None:
        raise CheckpointError(
            f"{path}: holds a bare state_dict with no model spec; pass "
            "model={'name': 'resnet18_cifar', 'kwargs': {}} or an nn.Module instance"
        )
    net = _build(model, path)
    _load_state(net, state, path)
    net.eval()
    spec = getattr(net, "landscape_spec", model if isinstance(model, dict) else None)
    meta = obj if isinstance(obj, dict) else {}
    return Checkpoint(
        path=path,
        model=net,
        model_spec=spec,
        step=int(meta.get("step", 0)) if isinstance(meta.get("step", 0), int) else 0,
        epoch=int(meta.get("epoch", 0)) if isinstance(meta.get("epoch", 0), int) else 0,
        optimizer_state=meta.get("optimizer_state", meta.get("optimizer")) if isinstance(meta.get("optimizer_state", meta.get("optimizer")), dict) else None,
        raw=meta,
    )


def _foreign_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint or state_dict")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ("model_state", "state_dict", "model_state_dict", "model", "net"):
        sub = obj.get(key)
        if isinstance(sub, dict) and sub and all(isinstance(v, torch.Tensor) for v in sub.values()):
            return sub
    raise CheckpointError(
        f"{path}: no state_dict found (looked for a dict of tensors at the top level or under "
        "'model_state', 'state_dict', 'model_state_dict', 'model', 'net')"
    )


def _build(model: nn.Module | dict[str, Any] | None, path: Path) -> nn.Module:
    if isinstance(model, nn.Module):
        return unwrap(model)
    if not isinstance(model, dict) or "name" not in model:
        raise CheckpointError(f"{path}: model spec must be {{'name': ..., 'kwargs': {{...}}}}, got {model!r}")
    try:
        return build_model(model["name"], **dict(model.get("kwargs") or {}))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild model: {e}") from None


def find_checkpoints(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Checkpoint files under folders (recursive ``*.pt``/``*.pth``) and given files, sorted.

    In a folder that holds ``epoch_*.pt`` files, ``last.pt`` is skipped: the trainer writes it
    as the resume point, and it duplicates the final epoch file (same step), which would give two
    results for one (run, step). A ``last.pt`` named explicitly is always kept.

    Example:
        >>> find_checkpoints("checkpoints/")  # doctest: +SKIP
        [PosixPath('checkpoints/sgd/epoch_0001.pt'), ...]
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = [q for q in p.rglob("*") if q.suffix in (".pt", ".pth") and q.is_file() and not q.name.startswith(".")]
            epoch_dirs = {q.parent for q in files if q.name.startswith("epoch_")}
            found.extend(q for q in files if not (q.name == "last.pt" and q.parent in epoch_dirs))
        elif p.exists():
            found.append(p)
        else:
            raise CheckpointError(f"{p}: no such file or folder")
    return sorted(set(found))

"""Checkpoint format, save and load (``weights_only=True``), the layouts people have, finding files.

Format written by landscape (one file per checkpoint, ``torch.save`` of primitives and tensors)::

    {"format_version": 1,
     "model": {"name": str, "kwargs": dict},   # a zoo name or an import path, see landscape.specs
     "model_state": state_dict,                 # unwrapped: no "module." / "_orig_mod."
     "optimizer": {"name": str, "kwargs": dict},
     "optimizer_state": base optimizer state_dict (holds momentum_buffer / exp_avg),
     "param_names": [str],                      # maps optimizer state indices to names
     "step": int, "epoch": int, "metrics": {str: float},
     "config": dict, "rng": {...}, "versions": {...}}

Read as well (with a model spec from the caller): weights bare or under ``state_dict``,
``model_state_dict``, ``model``, ``net`` or ``ema``; optimizer state under ``optimizer_state``,
``optimizer_state_dict``, ``optimizer``, ``optim`` or Lightning's ``optimizer_states`` list;
PyTorch Lightning ``.ckpt`` files (``state_dict`` with a ``model.`` prefix, ``epoch``,
``global_step``); ``.safetensors`` files (weights only); ``checkpoint-N/`` folders holding a
weights file (``model.safetensors``, ``pytorch_model.bin``, ...) and optionally ``optimizer.pt``.

Loading never executes code from a file: ``torch.load(..., weights_only=True)`` refuses any
pickle that would need a global outside torch's allow-list, and safetensors is data only. Before
anything is read, a file must be a regular file (a device or FIFO is refused without opening it),
no larger than the memory budget, and a zip archive must not inflate beyond its size on disk
(``torch.save`` never compresses, so a compressed archive is a zip bomb, refused from its
directory before inflating). Every error is a :class:`CheckpointError` that names the file.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import os
import pathlib
import pickle
import pickletools
import re
import stat
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from landscape.atomic import atomic_write
from landscape.models.registry import MAX_PARAMETERS
from landscape.specs import SpecError, default_search_paths, resolve_model

FORMAT_VERSION = 1
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: File name endings found in checkpoint folders.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
#: Where the weights may be in a file (first match wins; ``weights_key=`` picks one).
WEIGHTS_KEYS = ("model_state", "state_dict", "model_state_dict", "model", "net", "ema")
#: Where an optimizer state_dict may be.
OPTIMIZER_KEYS = ("optimizer_state", "optimizer_state_dict", "optimizer", "optim")
#: Weights files of a ``checkpoint-N/`` folder (Hugging Face Trainer and similar), in order.
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")
FOLDER_OPTIMIZER = ("optimizer.pt", "optimizer.bin", "optimizer.pth")
FOLDER_PATTERN = re.compile(r"^checkpoint[-_=]?\d+$")
#: A zip archive may hold at most this many times its size on disk (plus 1 MiB of slack).
MAX_INFLATION = 1.1
_INT64 = 2**63


def _default_max_bytes() -> int:
    """The memory budget for one file: the machine's physical memory (64 GiB if unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 64 * 2**30


MAX_CHECKPOINT_BYTES = _default_max_bytes()


class CheckpointError(Exception):
    """A checkpoint file that cannot be read or does not fit the model; names file and cause."""


class CheckpointWarning(UserWarning):
    """A path under a checkpoint folder that is not analysed (when no ``rejected`` list is given)."""


class Rejected(NamedTuple):
    """A path that :func:`find_checkpoints` did not return, and why."""

    path: Path
    reason: str

    def as_json(self) -> dict[str, str]:
        """``{"path": str, "reason": str}`` for a summary file."""
        return {"path": str(self.path), "reason": self.reason}


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


# ------------------------------------------------------------------------------------- writing


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`landscape.atomic.atomic_write` (never a partial file).

    Saved through an open file object: given a path, torch names the records inside the zip
    after the (temporary, random) file name, so identical objects would give different bytes.
    """
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


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
            :func:`landscape.models.build_model` (and a :class:`landscape.specs.ModelSpec` of an
            import path) attaches.

    Example:
        >>> import tempfile, os
        >>> from landscape.models import build_model
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


# ---------------------------------------------------------------------------- the loaded object


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``model`` is rebuilt and in eval mode.

    ``layout`` says how the file was read (``landscape``, ``state_dict``, ``lightning``,
    ``safetensors``, ``folder``); ``step_source`` where ``step`` came from (``file``: a key of
    the file, ``name``: the file or folder name such as ``step=1000.ckpt`` or
    ``checkpoint-500``, ``epoch``: no step anywhere, so the epoch is used, ``none``: 0).
    """

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
    layout: str = "landscape"
    step_source: str = "file"

    @property
    def run(self) -> str:
        """Run name: the folder the checkpoint lies in."""
        return self.path.resolve().parent.name

    def momentum(self) -> dict[str, torch.Tensor]:
        """Momentum buffers keyed by parameter name (SGD ``momentum_buffer``; Adam/AdamW ``exp_avg``).

        A plain optimizer's state is indexed by position: entry ``i`` of its ``param_groups``
        belongs to the ``i``-th parameter it was given. Landscape files record those names;
        for other files they are the model's parameters with ``requires_grad``, in
        ``named_parameters()`` order (what ``optimizer(model.parameters())`` sees), and every
        buffer's shape is checked against its parameter.

        Raises ``CheckpointError`` when the file holds no optimizer state or no buffers (a
        bare state_dict, or SGD without momentum), or when counts or shapes do not match.
        """
        state = (self.optimizer_state or {}).get("state")
        if not state:
            raise CheckpointError(
                f"{self.path}: holds no optimizer state, so no momentum buffers; momentum-direction "
                "analyses need a checkpoint with an optimizer state_dict (under 'optimizer_state', "
                "'optimizer_state_dict', 'optimizer', 'optim' or Lightning's 'optimizer_states') "
                "holding SGD 'momentum_buffer' or Adam/AdamW 'exp_avg'"
            )
        order = [i for g in self.optimizer_state.get("param_groups", []) for i in g.get("params", [])]
        params = dict(self.model.named_parameters())
        trainable = [n for n, p in params.items() if p.requires_grad]
        names = self.param_names if self.param_names and len(self.param_names) == len(order) else trainable
        if len(order) != len(names):
            raise CheckpointError(
                f"{self.path}: optimizer state covers {len(order)} parameters but the model has "
                f"{len(names)} trainable ones; cannot map momentum buffers to parameter names"
            )
        out = {}
        for idx, name in zip(order, names):
            if name not in params:
                raise CheckpointError(f"{self.path}: optimizer state names parameter {name!r}, which the model does not have")
            s = state.get(idx, state.get(str(idx), {}))
            buf = s.get("momentum_buffer", s.get("exp_avg")) if isinstance(s, Mapping) else None
            if buf is None:
                continue
            if not isinstance(buf, torch.Tensor) or buf.shape != params[name].shape:
                got = tuple(buf.shape) if isinstance(buf, torch.Tensor) else type(buf).__name__
                raise CheckpointError(
                    f"{self.path}: optimizer state entry {idx} has shape {got} but parameter "
                    f"{name!r} (position {order.index(idx)}) has {tuple(params[name].shape)}; the "
                    "optimizer was not built from this model's parameters in named_parameters() order"
                )
            out[name] = buf
        if not out:
            raise CheckpointError(
                f"{self.path}: optimizer state has no 'momentum_buffer' or 'exp_avg' entries "
                "(was it trained with momentum=0?)"
            )
        return out


# ------------------------------------------------------------------------------ reading bytes


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return name
    return "special file"


def _stat(path: Path) -> os.stat_result:
    """``os.stat`` (follows symlinks, opens nothing) with the failure named."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise CheckpointError(f"{path}: dangling symlink (to {os.readlink(path)}, which does not exist)") from None
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CheckpointError(f"{path}: symlink loop (the link resolves to itself)") from None
        raise CheckpointError(f"{path}: cannot be read: {e.strerror or e}") from None


def _regular(path: Path) -> os.stat_result:
    st = _stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(
            f"{path}: is a {_kind(st.st_mode)}, not a regular file; refused without opening it "
            "(reading a device or FIFO would never end)"
        )
    return st


def _describe_start(head: bytes) -> str:
    if not head:
        return "the file is empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with {head[:12]!r}"
    if all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"it is a text file starting {text.splitlines()[0][:40]!r}"
    return f"it starts with {head[:12]!r}"


def _sniff(path: Path, st: os.stat_result) -> str:
    """``"zip"``, ``"pickle"`` or ``"safetensors"`` from the first bytes, else CheckpointError."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read: {e.strerror or e}") from None
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= st.st_size:
        return "safetensors"
    raise CheckpointError(
        f"{path}: not a readable checkpoint: neither a torch.save archive, a pickle nor a "
        f"safetensors file ({_describe_start(head)})"
    )


def _check_size(path: Path, st: os.stat_result, kind: str, max_bytes: int) -> None:
    """Refuse files above the memory budget and zip archives that would inflate (zip bombs)."""
    if st.st_size > max_bytes:
        raise CheckpointError(f"{path}: {st.st_size:,} bytes exceed the memory budget max_bytes={max_bytes:,}; refused before reading")
    if kind != "zip":
        return
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated?): not a valid zip archive: {e}") from None
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise CheckpointError(
            f"{path}: the archive would inflate to {total:,} bytes, above the memory budget "
            f"max_bytes={max_bytes:,}; refused before inflating"
        )
    if total > MAX_INFLATION * st.st_size + 2**20:
        raise CheckpointError(
            f"{path}: the archive would inflate to {total:,} bytes from {st.st_size:,} on disk "
            "(a zip bomb: torch.save never compresses); refused before inflating"
        )


#: Plain-data classes of the standard library that training scripts put into checkpoints
#: (Lightning ``hyper_parameters``: paths, an ``argparse.Namespace``); unpickling them only
#: builds the value (``PosixPath(*parts)``, an attribute bag), so they join torch's allow-list.
_DATA_GLOBALS = [pathlib.PurePosixPath, pathlib.PosixPath, pathlib.PureWindowsPath, argparse.Namespace]


def _read_torch(path: Path) -> Any:
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_DATA_GLOBALS):
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


def _read_safetensors(path: Path) -> dict[str, Any]:
    """``{"state_dict": tensors, "metadata": {str: str}}`` (safetensors holds data only)."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(f"{path}: reading .safetensors files needs the 'safetensors' package (pip install safetensors)") from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends: a corrupt file
        raise CheckpointError(f"{path}: not a readable safetensors file (corrupt or truncated?): {type(e).__name__}: {e}") from None
    return {"state_dict": state, "metadata": meta}


def _read_file(path: Path, max_bytes: int) -> tuple[str, Any]:
    """(kind, content) of one regular file, after the type, size and inflation checks."""
    st = _regular(path)
    kind = _sniff(path, st)
    _check_size(path, st, kind, max_bytes)
    if kind == "safetensors":
        return kind, _read_safetensors(path)
    return kind, _read_torch(path)


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


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint file, or of a ``checkpoint-N/`` folder's weights and optimizer files.

    Non-regular files are refused (never opened), like :func:`load_checkpoint` does.
    """
    path = Path(path)
    st = _stat(path)
    files = [path]
    if stat.S_ISDIR(st.st_mode):
        files = [f for f in (_folder_weights(path), _folder_optimizer(path)) if f is not None]
    h = hashlib.sha256()
    for f in files:
        _regular(f)
        if len(files) > 1:
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _folder_weights(folder: Path) -> Path:
    """The weights file of a checkpoint folder: a name of FOLDER_WEIGHTS, or in a folder named
    ``checkpoint-N`` the single file with a checkpoint's suffix."""
    for name in FOLDER_WEIGHTS:
        if (folder / name).exists():
            return folder / name
    if not _is_checkpoint_folder(folder):
        raise CheckpointError(
            f"{folder}: is a folder, not a checkpoint file (a checkpoint folder is named "
            f"checkpoint-N or holds one of {', '.join(FOLDER_WEIGHTS)})"
        )
    cands = sorted(
        p for p in folder.iterdir()
        if p.suffix in (*CHECKPOINT_SUFFIXES, ".bin") and not p.name.startswith(".")
        and not p.name.startswith(("optimizer", "scheduler", "rng_state", "scaler", "training_args"))
    )
    if len(cands) == 1:
        return cands[0]
    raise CheckpointError(
        f"{folder}: a checkpoint folder needs one weights file ({', '.join(FOLDER_WEIGHTS)}, or a "
        f"single *.safetensors/*.pt/*.pth/*.bin/*.ckpt); found "
        + (", ".join(p.name for p in cands) if cands else "none")
    )


def _folder_optimizer(folder: Path) -> Path | None:
    return next((folder / n for n in FOLDER_OPTIMIZER if (folder / n).exists()), None)


# ------------------------------------------------------------------------------ interpreting


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and len(obj) > 0
        and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _is_optimizer_state(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and isinstance(obj.get("state"), Mapping)
        and isinstance(obj.get("param_groups"), list)
        and all(isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in obj["param_groups"])
    )


def _as_int(value: Any, what: str, path: Path) -> int:
    """A non-negative int64 (integral floats and digit strings of metadata accepted), else an error."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{path}: {what} must be an integer, got {value!r} ({type(value).__name__})")
    if not 0 <= value < _INT64:
        raise CheckpointError(f"{path}: {what} must be an integer in [0, 2**63), got {value}")
    return value


_NAME_STEP = re.compile(r"(?<![a-z])(?:global_step|step|steps|iteration|iter|checkpoint)[=_-]?(\d+)", re.I)
_NAME_EPOCH = re.compile(r"(?<![a-z])(?:epoch|ep)[=_-]?(\d+)", re.I)
_STEP_KEYS = ("step", "global_step", "iteration", "iter")


def _step_epoch(meta: Mapping[str, Any], path: Path) -> tuple[int, int, str]:
    """(step, epoch, step_source) from the file's keys, else its name, else the epoch."""
    name = path.name if path.is_dir() else path.stem

    def from_name(rx: re.Pattern[str], what: str) -> int | None:
        m = rx.search(name)
        return None if m is None else _as_int(int(m.group(1)), f"{what} in the file name", path)

    epoch = meta.get("epoch")
    epoch = _as_int(epoch, "epoch", path) if epoch is not None else from_name(_NAME_EPOCH, "epoch")
    for key in _STEP_KEYS:
        if meta.get(key) is not None:
            return _as_int(meta[key], key, path), epoch or 0, "file"
    step = from_name(_NAME_STEP, "step")
    if step is not None:
        return step, epoch or 0, "name"
    if epoch is not None:
        return epoch, epoch, "epoch"
    return 0, 0, "none"


def _validate_landscape(obj: dict[str, Any], path: Path) -> None:
    """Type checks of the landscape format, so a tampered field is named, not a later crash."""
    version = obj["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: format_version must be an integer, got {version!r} ({type(version).__name__})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version} is newer than this landscape understands "
            f"({FORMAT_VERSION}); upgrade landscape"
        )
    if version < 1:
        raise CheckpointError(f"{path}: format_version must be >= 1, got {version}")
    if not _is_state_dict(obj["model_state"]):
        got = obj["model_state"]
        raise CheckpointError(f"{path}: model_state must be a state_dict (a dict of tensors), got {type(got).__name__}")
    expected = {"config": dict, "metrics": dict, "model": dict, "optimizer": dict, "optimizer_state": dict, "param_names": list, "rng": dict}
    for key, typ in expected.items():
        value = obj.get(key)
        if value is not None and not isinstance(value, typ):
            raise CheckpointError(f"{path}: {key} must be a {typ.__name__}, got {value!r:.60} ({type(value).__name__})")
    spec = obj.get("model")
    if spec is not None and (not isinstance(spec.get("name"), str) or not isinstance(spec.get("kwargs", {}), dict)):
        raise CheckpointError(f"{path}: model must be {{'name': str, 'kwargs': dict}}, got {spec!r:.80}")
    for k, v in (obj.get("metrics") or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CheckpointError(f"{path}: metrics[{k!r}] must be a number, got {v!r:.40} ({type(v).__name__})")
    names = obj.get("param_names")
    if names is not None and not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: param_names must be a list of strings")
    if obj.get("optimizer_state") is not None and not _is_optimizer_state(obj["optimizer_state"]):
        raise CheckpointError(f"{path}: optimizer_state must be an optimizer state_dict ({{'state': ..., 'param_groups': [...]}})")


def _find_weights(obj: Any, path: Path, weights_key: str | None) -> tuple[dict[str, torch.Tensor], str]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint or state_dict")
    if weights_key is not None:
        if not _is_state_dict(obj.get(weights_key)):
            raise CheckpointError(
                f"{path}: weights_key={weights_key!r} is not a dict of tensors in this file; "
                f"its top-level keys: {', '.join(map(str, list(obj)[:20]))}"
            )
        return dict(obj[weights_key]), weights_key
    if _is_state_dict(obj):
        return dict(obj), "bare"
    for key in WEIGHTS_KEYS:
        if _is_state_dict(obj.get(key)):
            return dict(obj[key]), key
    raise CheckpointError(
        f"{path}: no state_dict found (looked for a dict of tensors at the top level or under "
        f"{', '.join(map(repr, WEIGHTS_KEYS))}); its top-level keys: {', '.join(map(str, list(obj)[:20])) or 'none'}"
    )


def _find_optimizer(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    for key in OPTIMIZER_KEYS:
        if _is_optimizer_state(obj.get(key)):
            return obj[key]
    states = obj.get("optimizer_states")  # PyTorch Lightning: one per optimizer
    if isinstance(states, list) and states and _is_optimizer_state(states[0]):
        return states[0]
    return None


def _load_state(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    """Load ``state`` strictly, after removing wrapper prefixes and, when the keys then do not
    match, one leading component shared by the model's keys (Lightning's ``model.``)."""
    state = strip_prefixes(state)
    own = set(model.state_dict())
    if set(state) != own:
        for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
            sub = strip_prefixes({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
            if set(sub) == own:
                state = sub
                break
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model {type(model).__name__}: {e}") from None


def _build(
    model: Any, stored: Any, model_kwargs: Mapping[str, Any] | None, path: Path,
    search_paths: Iterable[str | os.PathLike] | None, max_parameters: int,
) -> nn.Module:
    if isinstance(model, nn.Module):
        if model_kwargs:
            raise CheckpointError(f"{path}: model_kwargs given with an nn.Module instance; pass a class, factory or spec instead")
        return unwrap(model)
    spec = model if model is not None else stored
    if spec is None:
        raise CheckpointError(
            f"{path}: holds weights but no model spec; pass model= a zoo name or spec "
            "({'name': 'resnet18_cifar', 'kwargs': {}}), an import path 'pkg.module:factory', an "
            "nn.Module class or factory, or an nn.Module instance"
        )
    paths = default_search_paths(path) if search_paths is None else search_paths
    try:
        return resolve_model(spec, model_kwargs, search_paths=paths, max_parameters=max_parameters).build()
    except SpecError as e:
        raise CheckpointError(f"{path}: cannot rebuild the model: {e}") from None


def load_checkpoint(
    path: str | os.PathLike,
    model: Any = None,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    search_paths: Iterable[str | os.PathLike] | None = None,
    weights_key: str | None = None,
    max_parameters: int = MAX_PARAMETERS,
    max_bytes: int | None = None,
) -> Checkpoint:
    """Load a landscape checkpoint or a foreign file (state_dict layouts, Lightning, safetensors).

    Args:
        path: a ``.pt``/``.pth``/``.ckpt``/``.bin``/``.safetensors`` file or a ``checkpoint-N/``
            folder holding a weights file (and optionally ``optimizer.pt``).
        model: anything :func:`landscape.specs.resolve_model` accepts (a zoo name or
            ``{"name", "kwargs"}`` spec, ``"pkg.module:factory"``, an ``nn.Module`` class or
            factory), or an ``nn.Module`` instance to load into in place. Needed for foreign
            files; for landscape files it overrides the stored spec.
        model_kwargs: merged over the spec's kwargs.
        search_paths: folders for import paths (default: the checkpoint's folder, its parent
            and the current directory).
        weights_key: take the weights from this key (e.g. ``"ema"``) instead of the first of
            ``state_dict``, ``model_state_dict``, ``model``, ``net``, ``ema``.
        max_parameters: parameter budget of the model, checked before its weights exist.
        max_bytes: memory budget for the file (default: physical memory); larger files and
            archives that would inflate beyond it (or beyond their size on disk) are refused
            before reading.

    Returns:
        A :class:`Checkpoint`; ``.model`` is in eval mode; ``step``/``epoch`` come from the
        file's keys (``step``, ``global_step``, ``epoch``), else from its name
        (``epoch_12.pt``, ``epoch=3-step=1000.ckpt``, ``checkpoint-500``), else step = epoch.

    Raises:
        CheckpointError: naming the file and the cause (missing, not a regular file, too large,
            corrupt, truncated, text, a pickle that would execute code, a field of the wrong
            type, weights that do not fit, a model spec that cannot be built).

    Example:
        >>> ckpt = load_checkpoint("checkpoints/sgd/last.pt")  # doctest: +SKIP
        >>> ckpt.model, ckpt.epoch, ckpt.metrics["test_acc"]  # doctest: +SKIP
        >>> load_checkpoint("runs/epoch=3-step=120.ckpt", model="mynets:make_cnn")  # doctest: +SKIP
    """
    path = Path(path)
    budget = MAX_CHECKPOINT_BYTES if max_bytes is None else int(max_bytes)
    st = _stat(path)
    opt_from_folder = None
    if stat.S_ISDIR(st.st_mode):
        weights_file = _folder_weights(path)
        kind, obj = _read_file(weights_file, budget)
        opt_file = _folder_optimizer(path)
        if opt_file is not None:
            _, opt_obj = _read_file(opt_file, budget)
            opt_from_folder = opt_obj if _is_optimizer_state(opt_obj) else None
        layout = "folder"
    else:
        kind, obj = _read_file(path, budget)
        layout = kind
    if kind == "safetensors":
        meta = {k: int(v) for k, v in obj["metadata"].items() if k in ("step", "global_step", "epoch") and str(v).isdigit()}
        state, raw = obj["state_dict"], {"metadata": obj["metadata"]}
        opt_state = opt_from_folder
    elif isinstance(obj, Mapping) and "model_state" in obj and "format_version" in obj:
        _validate_landscape(obj, path)
        net = _build(model, obj.get("model"), model_kwargs, path, search_paths, max_parameters)
        _load_state(net, obj["model_state"], path)
        net.eval()
        step, epoch, source = _step_epoch(obj, path)
        return Checkpoint(
            path=path,
            model=net,
            model_spec=getattr(net, "landscape_spec", None) if model is not None else obj.get("model"),
            config=obj.get("config") or {},
            step=step,
            epoch=epoch,
            metrics=dict(obj.get("metrics") or {}),
            optimizer_state=obj.get("optimizer_state"),
            optimizer_spec=obj.get("optimizer"),
            param_names=obj.get("param_names"),
            raw=obj,
            layout="landscape",
            step_source=source,
        )
    else:
        state, key = _find_weights(obj, path, weights_key)
        meta = raw = dict(obj) if key != "bare" else {}
        opt_state = _find_optimizer(raw) or opt_from_folder
        if layout != "folder":
            layout = "lightning" if "pytorch-lightning_version" in raw or "optimizer_states" in raw else "state_dict"
    step, epoch, source = _step_epoch(meta, path)
    net = _build(model, None, model_kwargs, path, search_paths, max_parameters)
    _load_state(net, state, path)
    net.eval()
    if isinstance(model, nn.Module):
        spec = getattr(net, "landscape_spec", None)
    else:
        spec = getattr(net, "landscape_spec", model if isinstance(model, Mapping) else None)
    return Checkpoint(
        path=path,
        model=net,
        model_spec=spec,
        step=step,
        epoch=epoch,
        optimizer_state=opt_state,
        raw=raw,
        layout=layout,
        step_source=source,
    )


# ------------------------------------------------------------------------------------- finding


def _is_checkpoint_folder(path: Path) -> bool:
    return bool(FOLDER_PATTERN.match(path.name))


def find_checkpoints(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    rejected: list[Rejected] | None = None,
    allow_external_symlinks: bool = False,
) -> list[Path]:
    """Checkpoints under folders and given paths, sorted.

    In folders (recursively): files ending in ``.pt``, ``.pth``, ``.ckpt``, ``.safetensors``, and
    ``checkpoint-N/`` folders (one entry each, their weights file inside). Hidden files
    (temporaries of atomic writes) are ignored. In a folder that holds ``epoch_*.pt`` files,
    ``last.pt`` is skipped: the trainer writes it as the resume point and it duplicates the
    final epoch (same step). A path named explicitly is always kept when it is a regular file
    or a checkpoint folder.

    Nothing is skipped silently: what has a checkpoint's name but cannot be one is *rejected*
    with a reason: devices, FIFOs and sockets (never opened), dangling symlinks, symlink loops,
    a folder named like a file (``x.pt/``), a ``checkpoint-N/`` folder without weights, and
    symlinks that leave the folder (followed only with ``allow_external_symlinks=True``) or
    that point at a checkpoint found under its own name.

    Args:
        paths: folders and/or files.
        rejected: a list that receives :class:`Rejected` ``(path, reason)`` entries; when
            ``None`` each one is reported as a :class:`CheckpointWarning`.
        allow_external_symlinks: follow symlinks whose target lies outside the folder searched.

    Raises:
        CheckpointError: a path given explicitly that does not exist.

    Example:
        >>> find_checkpoints("checkpoints/")  # doctest: +SKIP
        [PosixPath('checkpoints/sgd/epoch_0001.pt'), ...]
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Rejected] = []
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists() and not p.is_symlink():
            raise CheckpointError(f"{p}: no such file or folder")
        try:
            st = _stat(p)
        except CheckpointError as e:
            out.append(Rejected(p, str(e).removeprefix(f"{p}: ")))
            continue
        if stat.S_ISDIR(st.st_mode) and not _is_checkpoint_folder(p):
            found.extend(_walk(p, out, allow_external_symlinks))
        elif stat.S_ISREG(st.st_mode) or _is_checkpoint_folder(p):
            found.append(p)
        else:
            out.append(Rejected(p, f"is a {_kind(st.st_mode)}, not a regular file (not opened)"))
    if rejected is None:
        for r in out:
            warnings.warn(f"{r.path}: not analysed: {r.reason}", CheckpointWarning, stacklevel=2)
    else:
        rejected.extend(out)
    return sorted(set(found))


def _walk(root: Path, rejected: list[Rejected], allow_external: bool) -> list[Path]:
    """Checkpoints under ``root``; symlinked folders inside it are entered once, none outside."""
    real_root = root.resolve()
    files: list[Path] = []
    pending: list[tuple[Path, Path]] = []  # (symlink path, resolved target) decided after the walk
    visited: set[Path] = set()

    def inside(target: Path) -> bool:
        return target == real_root or real_root in target.parents

    def visit(folder: Path) -> None:
        real = folder.resolve()
        if real in visited:
            return
        visited.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            rejected.append(Rejected(folder, f"folder cannot be listed: {e.strerror or e}"))
            return
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                continue
            named = path.suffix in CHECKPOINT_SUFFIXES
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except FileNotFoundError:
                    if named or _is_checkpoint_folder(path):
                        rejected.append(Rejected(path, f"dangling symlink (to {os.readlink(path)}, which does not exist)"))
                    continue
                except (OSError, RuntimeError):  # ELOOP
                    rejected.append(Rejected(path, "symlink loop (the link resolves to itself)"))
                    continue
                if not inside(target) and not allow_external:
                    if named or target.is_dir():
                        rejected.append(Rejected(path, f"symlink to {target}, outside {root} (pass allow_external_symlinks=True to follow it)"))
                    continue
                if target.is_dir() and not _is_checkpoint_folder(path):
                    visit(path)
                    continue
                if named or _is_checkpoint_folder(path):
                    pending.append((path, target))
                continue
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError as e:
                rejected.append(Rejected(path, f"cannot be read: {e.strerror or e}"))
                continue
            if stat.S_ISDIR(mode):
                if _is_checkpoint_folder(path):
                    try:
                        _folder_weights(path)
                        files.append(path)
                    except CheckpointError as e:
                        rejected.append(Rejected(path, str(e).removeprefix(f"{path}: ")))
                    continue
                if named:
                    rejected.append(Rejected(path, "is a folder with a checkpoint's name, not a checkpoint file (its contents are searched)"))
                visit(path)
            elif named:
                if stat.S_ISREG(mode):
                    files.append(path)
                else:
                    rejected.append(Rejected(path, f"is a {_kind(mode)}, not a regular file (not opened)"))

    visit(root)
    real_files = {f.resolve(): f for f in files}
    for link, target in pending:
        if target in real_files:
            rejected.append(Rejected(link, f"symlink to {real_files[target]}, which is analysed under its own name"))
        elif target.is_file() or target.is_dir():
            files.append(link)
            real_files[target] = link
        else:
            rejected.append(Rejected(link, f"symlink to {target}, which is not a regular file (not opened)"))
    epoch_dirs = {q.parent for q in files if q.name.startswith("epoch_")}
    return [q for q in files if not (q.name == "last.pt" and q.parent in epoch_dirs)]

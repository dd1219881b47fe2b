"""The results store: one netCDF file per (checkpoint, analysis), written atomically.

Layout (see ``shared/DESIGN.md``, "Result format")::

    <out>/<run>/<checkpoint stem>/<analysis>-<options hash>.nc
    <out>/summary.json                         # the last batch run: done, skipped, failed

The options hash (:func:`options_hash`, 10 hex digits) is *always* part of the file name, also
for the default options: a result computed with other options lands beside the old one instead
of replacing it, and "is this result already there?" is a single ``exists()``. The hash covers the
analysis options and the data options (which data set, split and how many examples), with
integral floats normalized (``rho = 1`` and ``rho = 1.0`` hash alike).

Every file is written to a hidden temporary file in the same folder and then ``os.replace``d, so
a killed process never leaves a partial ``.nc`` (at most a hidden ``.<name>.<host>.<pid>-<token>.tmp``, which
:func:`open_results` ignores; see :mod:`landscape.atomic`).

Global attributes: ``landscape_version``, ``analysis``, ``created``, ``checkpoint``,
``checkpoint_sha256``, ``torch_version``, ``config_json`` (the analysis options), ``options_hash``,
``data_json`` (the data the analysis saw), ``checkpoint_config_json`` (the training config stored
in the checkpoint), ``epoch``, ``device``. Each file has length-1 ``run`` and ``step`` coordinates
so that :func:`open_results` combines a folder with ``xr.combine_by_coords``.

Besides ``landscape.checkpoint``, this is the only module that touches the disk.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from landscape.atomic import atomic_write, atomic_write_text

ENGINE = "h5netcdf"
HASH_LEN = 10

# Attributes that differ from file to file; open_results turns them into (run, step) coordinates.
PER_FILE_ATTRS: dict[str, Any] = {
    "checkpoint": "",
    "checkpoint_sha256": "",
    "created": "",
    "epoch": -1,
    "device": "",
    "data_json": "",
    "checkpoint_config_json": "",
    "landscape_version": "",
    "torch_version": "",
}


class ResultError(ValueError):
    """A results folder or file that cannot be read or combined as asked."""


def _canonical(obj: Any) -> Any:
    """JSON-ready value in which ``1`` and ``1.0``, and lists and tuples, are the same."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return int(x) if x.is_integer() and abs(x) < 2**53 else x
    if hasattr(obj, "to_dict"):
        return _canonical(obj.to_dict())
    raise TypeError(f"cannot hash option value of type {type(obj).__name__}: {obj!r}")


def options_hash(analysis: str, options: Any, data: Any = None) -> str:
    """Short stable hash of an analysis' options and data options (10 hex digits).

    ``options`` and ``data`` are :class:`landscape.config.Options` objects or plain dicts.

    Example:
        >>> options_hash("hessian", {"top_k": 5}) == options_hash("hessian", {"top_k": 5.0})
        True
        >>> len(options_hash("hessian", {"top_k": 5}))
        10
    """
    payload = {"analysis": analysis, "options": _canonical(options or {}), "data": _canonical(data or {})}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
_HASHED = re.compile(r"-h[0-9a-f]{8}$")
MAX_NAME = 80  # characters of a sanitized name kept before its hash suffix


def safe_name(name: str, *, force_hash: bool = False, key: str | None = None) -> str:
    """One path component for a run or checkpoint name, distinct for distinct names.

    A name made only of ``A-Za-z0-9._=+-`` (not starting or ending with ``.``/``_``, at most
    80 characters) is kept as it is. Any other name is sanitized *and* given the suffix
    ``-h<8 hex digits of sha256(key or name)>``, so ``sam-α`` and ``sam-β``, ``epoch 1`` and
    ``epoch_1``, or ``..`` and ``_`` never share a folder. A name that already ends like such a
    suffix is suffixed too, so a kept name never equals a suffixed one.

    Example:
        >>> safe_name("epoch_1"), safe_name("epoch 1")
        ('epoch_1', 'epoch_1-h51604db2')
        >>> safe_name("..") != safe_name("_")
        True
    """
    name = str(name)
    safe = _SAFE.sub("_", name).strip("._")[:MAX_NAME] or "_"
    if safe == name and not force_hash and not _HASHED.search(name):
        return name
    digest = hashlib.sha256(str(key if key is not None else name).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe}-h{digest}"


def checkpoint_name(checkpoint: str | os.PathLike) -> str:
    """The results folder of a checkpoint: its stem for ``*.pt``, else its whole name.

    ``model.ckpt`` and ``model.safetensors`` in one folder thus get two folders. To keep the
    mapping one-to-one, a ``.pt`` stem that itself has a suffix (``a.pth.pt``) and a name without
    any suffix (``checkpoint-500``) are always hash-suffixed (:func:`safe_name`): kept names
    without a suffix come only from ``*.pt`` files, kept names with one only from other files.

    Example:
        >>> checkpoint_name("ck/epoch_0003.pt"), checkpoint_name("ck/model.safetensors")
        ('epoch_0003', 'model.safetensors')
    """
    p = Path(checkpoint)
    if p.suffix == ".pt":
        return safe_name(p.stem, force_hash=bool(Path(p.stem).suffix), key=p.name)
    return safe_name(p.name, force_hash=not p.suffix, key=p.name)


def result_path(out: str | os.PathLike, run: str, checkpoint: str | os.PathLike, analysis: str, hash_: str) -> Path:
    """``<out>/<run>/<checkpoint name>/<analysis>-<hash>.nc``, a pure function of its arguments.

    ``run`` may contain ``/`` (nested runs such as ``sam/seed0``); each part becomes a folder
    (``.`` and empty parts are dropped). Every part goes through :func:`safe_name`, so distinct
    names give distinct paths and nothing escapes ``out``.

    Example:
        >>> result_path("results", "sgd", "ckpts/sgd/epoch_0003.pt", "hessian", "0123456789").as_posix()
        'results/sgd/epoch_0003/hessian-0123456789.nc'
    """
    parts = [safe_name(p) for p in str(run).replace("\\", "/").split("/") if p not in ("", ".")]
    return Path(out, *parts, checkpoint_name(checkpoint), f"{analysis}-{hash_}.nc")


def _result_name_re(analysis: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(analysis)}-([0-9a-f]{{{HASH_LEN}}})\.nc$")


def _check_attr(key: str, value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return list(value)
    raise ResultError(f"attribute {key!r} must be str/int/float or a list of them, got {type(value).__name__}")


def write_result(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    analysis: str,
    run: str,
    step: int,
    checkpoint: str | os.PathLike,
    checkpoint_sha256: str,
    options_hash: str,
    config_json: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``ds`` with provenance to ``path`` atomically (temp file, then ``os.replace``).

    Adds length-1 ``run`` and ``step`` dimensions to every data variable and the global
    attributes listed in the module docstring. ``config_json`` defaults to the one the analysis
    put in ``ds.attrs``. ``attrs`` adds more (``epoch``, ``device``, ``data_json``...).

    Example:
        >>> import tempfile, xarray as xr
        >>> ds = xr.Dataset({"x": ((), 1.0, {"long_name": "x", "units": "1"})})
        >>> p = write_result(ds, tempfile.mkdtemp() + "/r/a/demo-0123456789.nc", analysis="demo",
        ...                  run="r", step=3, checkpoint="a.pt", checkpoint_sha256="0" * 64,
        ...                  options_hash="0123456789", config_json="{}")
        >>> read_result(p)["x"].dims
        ('run', 'step')
    """
    import torch

    from landscape import __version__

    path = Path(path)
    for dim in ("run", "step"):
        if dim in ds.dims or dim in ds.coords:
            raise ResultError(f"analysis {analysis!r} returned a Dataset that already has a {dim!r} coordinate")
    out = ds.expand_dims(run=[str(run)], step=[int(step)])
    out["run"].attrs.update(long_name="training run", units="1")
    out["step"].attrs.update(long_name="training step (optimizer updates)", units="1")
    meta = dict(ds.attrs)
    meta.update(
        landscape_version=str(__version__),
        analysis=analysis,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        checkpoint=str(checkpoint),
        checkpoint_sha256=checkpoint_sha256,
        torch_version=str(torch.__version__),
        config_json=config_json if config_json is not None else str(ds.attrs.get("config_json", "{}")),
        options_hash=options_hash,
    )
    meta.update(attrs or {})
    out.attrs = {k: _check_attr(k, v) for k, v in meta.items()}
    # Serialize in memory, then write plain bytes: HDF5 never sees a failing disk (on a full
    # disk its close in an error path could crash the process), and a full disk is an ordinary
    # OSError(ENOSPC) from os.write.
    data = out.to_netcdf(engine=ENGINE)  # a memoryview: written as it is, not copied
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def read_result(path: str | os.PathLike) -> xr.Dataset:
    """Load one result file fully into memory (the file is closed afterwards)."""
    path = Path(path)
    if not path.is_file():
        raise ResultError(f"{path}: no such result file")
    try:
        with xr.open_dataset(path, engine=ENGINE) as ds:
            return ds.load()
    except (OSError, ValueError) as e:
        raise ResultError(f"{path}: not a readable result file: {type(e).__name__}: {e}") from None


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The global attributes of a result file, without reading its variables."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: (v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v)
                    for k, v in f.attrs.items()}
    except OSError as e:
        raise ResultError(f"{path}: not a readable result file: {e}") from None


def existing_result(path: str | os.PathLike, checkpoint_sha256: str | None = None) -> str:
    """State of a result file: ``"missing"``, ``"current"`` or ``"stale"``.

    ``"stale"``: the file exists but was computed from a checkpoint whose bytes differ from
    ``checkpoint_sha256`` (the checkpoint was overwritten since), or it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    if checkpoint_sha256 is None:
        return "current"
    try:
        return "current" if read_attrs(path).get("checkpoint_sha256") == checkpoint_sha256 else "stale"
    except ResultError:
        return "stale"


def find_results(folder: str | os.PathLike, analysis: str) -> dict[str, list[Path]]:
    """Result files of ``analysis`` under ``folder`` (recursive), grouped by options hash."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultError(f"{folder}: no such results folder")
    name_re = _result_name_re(analysis)
    groups: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob(f"{analysis}-*.nc")):
        m = name_re.match(p.name)
        if m and p.is_file():
            groups.setdefault(m.group(1), []).append(p)
    return groups


_MISSING = object()


def _plain_attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _varying_attrs(datasets: list[xr.Dataset]) -> dict[str, Any]:
    """Attributes (besides :data:`PER_FILE_ATTRS`) that differ between files or are missing in
    some, with the fill value of their coordinate: -1 for integers, NaN for other numbers, ``""``
    for strings (lists become JSON strings)."""
    taken = {str(n) for d in datasets for n in (*d.variables, *d.dims)}  # a coordinate must not shadow them
    keys = sorted({k for d in datasets for k in d.attrs} - set(PER_FILE_ATTRS) - taken)
    out: dict[str, Any] = {}
    for key in keys:
        values = [_plain_attr(d.attrs.get(key, _MISSING)) for d in datasets]
        if all(v is not _MISSING for v in values) and all(v == values[0] for v in values[1:]):
            continue  # shared by every file: stays a global attribute
        present = [v for v in values if v is not _MISSING]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            out[key] = -1
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            out[key] = float("nan")
        else:
            out[key] = ""
    return out


def _attrs_to_coords(ds: xr.Dataset, fills: Mapping[str, Any]) -> xr.Dataset:
    coords = {}
    for key, fill in fills.items():
        value = _plain_attr(ds.attrs.pop(key, fill))
        if isinstance(fill, str):
            value = value if isinstance(value, str) else json.dumps(value, default=str)
        elif isinstance(fill, int):
            value = int(value)
        else:
            value = float(value)
        coords[key] = (("run", "step"), np.array([[value]]))
    return ds.assign_coords(coords)


def _why_not_combinable(ds: xr.Dataset, analysis: str) -> str | None:
    if ds.attrs.get("analysis") != analysis:
        return f"not a landscape {analysis!r} result (attribute analysis={ds.attrs.get('analysis')!r})"
    if ds.sizes.get("run") != 1 or ds.sizes.get("step") != 1:
        return "has no length-1 'run' and 'step' dimensions"
    return None


def open_results(
    folder: str | os.PathLike,
    analysis: str,
    *,
    options_hash: str | None = None,
) -> xr.Dataset:
    """Combine every result of ``analysis`` under ``folder`` into one Dataset over (run, step).

    Per-file provenance (``checkpoint``, ``checkpoint_sha256``, ``created``, ``epoch``, ``device``,
    ``data_json``, ``checkpoint_config_json``, versions) becomes coordinates along (run, step),
    and so does every other scalar attribute whose value differs between files (e.g. a
    Hessian's ``sigma`` or a timing; fill -1 / NaN / ``""`` where a file lacks it);
    runs with different steps are outer-joined (missing entries are NaN, ``""`` or ``-1``).
    Attributes shared by all files (``analysis``, ``config_json``, ``options_hash``) stay.
    Files that are not results of ``analysis`` (a foreign ``.nc`` with a matching name) are
    skipped with a warning and listed in ``attrs["ignored_files"]``; a file that cannot be read
    at all raises :class:`ResultError` naming it.

    Args:
        folder: a results folder written by :func:`landscape.analyze`.
        analysis: registry name, e.g. ``"hessian"``.
        options_hash: which options to read when the folder holds results of several option
            sets (the error lists them); a unique prefix is enough.

    When two files share a (run, step) - e.g. ``last.pt`` named explicitly beside the final
    ``epoch_*.pt`` - the one whose checkpoint stem is not ``last`` (then the first by name) is
    kept, and the others are listed in ``attrs["duplicates_dropped"]``.

    Example:
        >>> ds = open_results("results", "hessian")  # doctest: +SKIP
        >>> ds.eigenvalues.sel(k=0).plot.line(x="step", hue="run")  # doctest: +SKIP
    """
    groups = find_results(folder, analysis)
    if not groups:
        raise ResultError(f"{folder}: no {analysis!r} results (files named {analysis}-<hash>.nc)")
    if options_hash is not None:
        chosen = [h for h in groups if h.startswith(options_hash)]
        if len(chosen) != 1:
            raise ResultError(
                f"options_hash={options_hash!r} matches {len(chosen)} option sets of {analysis!r} in "
                f"{folder}; available: {', '.join(sorted(groups))}"
            )
        files = groups[chosen[0]]
    elif len(groups) > 1:
        lines = []
        for h, fs in sorted(groups.items()):
            cfg = read_attrs(fs[0]).get("config_json", "")
            lines.append(f"  {h}: {len(fs)} files, options {cfg}")
        raise ResultError(
            f"{folder} holds {analysis!r} results computed with {len(groups)} different option sets; "
            "pick one with options_hash=...:\n" + "\n".join(lines)
        )
    else:
        files = next(iter(groups.values()))

    loaded, ignored = [], []
    for f in files:
        ds = read_result(f)  # an unreadable file is an error naming it (delete or restore it)
        why = _why_not_combinable(ds, analysis)
        if why:
            ignored.append(f"{f}: {why}")
            continue
        loaded.append(ds)
    if ignored:
        warnings.warn(f"open_results({str(folder)!r}, {analysis!r}) ignored {len(ignored)} file(s): "
                      + "; ".join(ignored), stacklevel=2)
    if not loaded:
        raise ResultError(f"{folder}: no {analysis!r} results of landscape; ignored: " + "; ".join(ignored))
    fills = {**PER_FILE_ATTRS, **_varying_attrs(loaded)}
    by_key: dict[tuple[str, int], list[xr.Dataset]] = {}
    for ds in loaded:
        ds = _attrs_to_coords(ds, fills)
        by_key.setdefault((str(ds["run"].item()), int(ds["step"].item())), []).append(ds)
    parts, dropped = [], []
    for key in sorted(by_key):
        cands = sorted(by_key[key], key=lambda d: (Path(str(d["checkpoint"].item())).stem == "last",
                                                   str(d["checkpoint"].item())))
        parts.append(cands[0])
        dropped.extend(str(d["checkpoint"].item()) for d in cands[1:])
    try:
        # Explicit kwargs: the current defaults, which xarray warns it will change.
        combined = xr.combine_by_coords(parts, join="outer", fill_value=fills, combine_attrs="drop_conflicts",
                                        data_vars="all", coords="different", compat="no_conflicts")
    except ValueError as e:  # xarray's AlignmentError / MergeError are ValueErrors
        raise ResultError(f"{folder}: the {analysis!r} results cannot be combined over (run, step): "
                          f"{type(e).__name__}: {e}") from None
    if dropped:
        combined.attrs["duplicates_dropped"] = dropped
    if ignored:
        combined.attrs["ignored_files"] = ignored
    return combined


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (:func:`landscape.atomic.atomic_write`)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing, unreadable or corrupt file raises :class:`ResultError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from None


__all__ = [
    "ResultError",
    "existing_result",
    "find_results",
    "open_results",
    "options_hash",
    "read_attrs",
    "read_json",
    "read_result",
    "result_path",
    "write_json",
    "write_result",
]

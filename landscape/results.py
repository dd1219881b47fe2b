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


def _safe_part(name: str) -> str:
    name = _SAFE.sub("_", str(name)).strip("._") or "_"
    return name


def result_path(out: str | os.PathLike, run: str, checkpoint: str | os.PathLike, analysis: str, hash_: str) -> Path:
    """``<out>/<run>/<checkpoint stem>/<analysis>-<hash>.nc``.

    ``run`` may contain ``/`` (nested runs such as ``sam/seed0``); each part becomes a folder.

    Example:
        >>> result_path("results", "sgd", "ckpts/sgd/epoch_0003.pt", "hessian", "0123456789").as_posix()
        'results/sgd/epoch_0003/hessian-0123456789.nc'
    """
    parts = [_safe_part(p) for p in str(run).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    stem = _safe_part(Path(checkpoint).stem)
    return Path(out, *parts, stem, f"{analysis}-{hash_}.nc")


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
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: out.to_netcdf(tmp, engine=ENGINE))


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


def _provenance_to_coords(ds: xr.Dataset) -> xr.Dataset:
    coords = {}
    for key, fill in PER_FILE_ATTRS.items():
        value = ds.attrs.pop(key, fill)
        value = str(value) if isinstance(fill, str) else int(value)
        coords[key] = (("run", "step"), np.array([[value]]))
    return ds.assign_coords(coords)


def open_results(
    folder: str | os.PathLike,
    analysis: str,
    *,
    options_hash: str | None = None,
) -> xr.Dataset:
    """Combine every result of ``analysis`` under ``folder`` into one Dataset over (run, step).

    Per-file provenance (``checkpoint``, ``checkpoint_sha256``, ``created``, ``epoch``, ``device``,
    ``data_json``, ``checkpoint_config_json``, versions) becomes coordinates along (run, step);
    runs with different steps are outer-joined (missing entries are NaN, ``""`` or ``-1``).
    Attributes shared by all files (``analysis``, ``config_json``, ``options_hash``) stay.

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

    by_key: dict[tuple[str, int], list[xr.Dataset]] = {}
    for f in files:
        ds = _provenance_to_coords(read_result(f))
        by_key.setdefault((str(ds["run"].item()), int(ds["step"].item())), []).append(ds)
    parts, dropped = [], []
    for key in sorted(by_key):
        cands = sorted(by_key[key], key=lambda d: (Path(str(d["checkpoint"].item())).stem == "last",
                                                   str(d["checkpoint"].item())))
        parts.append(cands[0])
        dropped.extend(str(d["checkpoint"].item()) for d in cands[1:])
    fill = {k: v for k, v in PER_FILE_ATTRS.items()}
    # Explicit kwargs: the current defaults, which xarray warns it will change.
    combined = xr.combine_by_coords(parts, join="outer", fill_value=fill, combine_attrs="drop_conflicts",
                                    data_vars="all", coords="different", compat="no_conflicts")
    if dropped:
        combined.attrs["duplicates_dropped"] = dropped
    return combined


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (:func:`landscape.atomic.atomic_write`)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


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

"""MNIST-1D (Greydanus, 2020), generated locally by the ``mnist1d`` package and cached."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from landscape.atomic import atomic_write
from landscape.data.base import ArrayDataset, check_num_samples


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$LANDSCAPE_DATA``, else ``~/.cache/landscape``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("LANDSCAPE_DATA", Path.home() / ".cache" / "landscape"))


def _generate(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    # mnist1d seeds numpy's and Python's global RNGs; restore them so we touch no global state.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}


def mnist1d(split: str = "train", *, root=None, num_samples: int = 5000, seed: int = 42) -> ArrayDataset:
    """MNIST-1D: 40-sample signals, 10 classes; the standard split is 4000 train / 1000 test.

    The data are generated on first use (about a second) and cached as ``.npz`` (never a
    pickle) under :func:`data_dir`.

    Example:
        >>> ds = mnist1d("test")
        >>> ds.x.shape
        torch.Size([1000, 40])
    """
    check_num_samples(num_samples, 40, "mnist1d")
    path = data_dir(root) / f"mnist1d_n{num_samples}_s{seed}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        arrays = _generate(num_samples, seed)
        atomic_write(path, lambda tmp: _savez(tmp, arrays))
    xk, yk = ("x", "y") if split == "train" else ("x_test", "y_test")
    x = torch.as_tensor(arrays[xk], dtype=torch.float32)
    y = torch.as_tensor(arrays[yk], dtype=torch.long)
    return ArrayDataset(x, y, 10, "mnist1d", split)


def _savez(path: Path, arrays: dict) -> None:
    # np.savez appends ".npz" to a name without it; an open file keeps the temporary name.
    with open(path, "wb") as f:
        np.savez(f, **arrays)

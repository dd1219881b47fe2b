"""CIFAR-10 and CIFAR-100 from a local folder in the official "python version" layout.

Nothing is downloaded. The batch files are pickles; they are read with a restricted unpickler
that can only rebuild numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from landscape.data.augment import RandomCropFlip
from landscape.data.base import ArrayDataset
from landscape.data.mnist1d import data_dir

#: Per-channel mean/std of the training images, the constants of SAM-ON's training script
#: (``train.py``, ``load_cifar``); the CIFAR-10 std is the widely used (0.2023, 0.1994, 0.2010).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

_SPECS = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "files": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "label_key": b"labels",
        "num_classes": 10,
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "files": {"train": ["train"], "test": ["test"]},
        "label_key": b"fine_labels",
        "num_classes": 100,
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    },
}


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` restricted to the one use a pickle of bytes makes of it."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR batch file may reference: numpy array reconstruction (and bytes)."""
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes into protocol <= 2 pickles as _codecs.encode(str, "latin1")
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        # protocol-5 pickles of arrays (a file re-saved by Python 3) use _frombuffer
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array globals and refuses everything else."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR batch file holds only numpy "
                "arrays, lists and bytes (is the file tampered with or not a CIFAR file?)"
            ) from None


class DataFileError(pickle.UnpicklingError, ValueError):
    """A data file that cannot be read as what it should be (the message names the file).

    A ``ValueError`` (bad input: exit status 2 on the command line) and, for code written
    against earlier versions, a ``pickle.UnpicklingError``.
    """


def load_batch_file(path: str | os.PathLike) -> dict[bytes, object]:
    """Read one CIFAR batch pickle safely; keys are returned as ``bytes``.

    Example:
        >>> import tempfile, pickle, numpy as np
        >>> p = Path(tempfile.mkdtemp()) / "b"
        >>> _ = p.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [3]}))
        >>> sorted(load_batch_file(p))
        [b'data', b'labels']
    """
    with open(path, "rb") as f:
        try:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as e:
            raise DataFileError(f"{path}: {e}") from None
        except Exception as e:  # noqa: BLE001 - empty, truncated or tampered: whatever unpickling raises
            raise DataFileError(
                f"{path}: not a readable CIFAR batch file ({type(e).__name__}: {e or 'no data'}); "
                "is it truncated, empty or tampered with? Extract the archive again"
            ) from None
    if not isinstance(obj, dict):
        raise DataFileError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}


def _layout(spec: dict) -> str:
    train = spec["files"]["train"]
    train_names = f"{train[0]} ... {train[-1]}" if len(train) > 1 else train[0]
    return (
        f"Expected the extracted python version of {spec['title']} ({spec['url']}):\n"
        f"  <root>/{spec['folder']}/\n"
        f"      {train_names:<32}train: pickled dicts with b\"data\" uint8 (N, 3072) and "
        f"b\"{spec['label_key'].decode()}\"\n"
        f"      {spec['files']['test'][0]:<32}test, same format\n"
        f"Pass root= (that folder or its parent) or set $LANDSCAPE_DATA; nothing is downloaded."
    )


def find_folder(name: str, split: str, root=None) -> Path:
    """The folder holding ``split``'s batch files: ``root`` itself or ``root/<standard folder>``."""
    spec = _SPECS[name]
    base = data_dir(root)
    candidates = [base, base / spec["folder"]]
    for folder in candidates:
        if all((folder / f).is_file() for f in spec["files"][split]):
            return folder
    looked = " and ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{spec['title']} {split} files ({', '.join(spec['files'][split])}) not found in {looked}.\n"
        + _layout(spec)
    )


def _read(name: str, split: str, root, normalize: bool) -> ArrayDataset:
    spec = _SPECS[name]
    if split not in spec["files"]:
        raise ValueError(f"unknown split {split!r} for {name}; accepted: train, test")
    folder = find_folder(name, split, root)
    datas, labels = [], []
    for fname in spec["files"][split]:
        path = folder / fname
        batch = load_batch_file(path)
        if b"data" not in batch or spec["label_key"] not in batch:
            raise ValueError(
                f"{path}: missing key b\"data\" or {spec['label_key']!r} (has {sorted(batch)}).\n" + _layout(spec)
            )
        data = batch[b"data"]
        lab = np.asarray(batch[spec["label_key"]])
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path}: b\"data\" must be a uint8 array (N, 3072), got {getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}")
        if lab.shape != (data.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"{path}: expected {data.shape[0]} integer labels, got {lab.dtype} {lab.shape}")
        if lab.size and (lab.min() < 0 or lab.max() >= spec["num_classes"]):
            raise ValueError(f"{path}: labels must lie in [0, {spec['num_classes']}), got {lab.min()}..{lab.max()}")
        datas.append(data)
        labels.append(lab)
    data = np.concatenate(datas)
    # rows are 1024 red, 1024 green, 1024 blue values, each image row-major: (N, 3, 32, 32)
    x = torch.from_numpy(data).reshape(-1, 3, 32, 32).to(torch.float32).div_(255.0)
    mean = torch.tensor(spec["mean"]).reshape(1, 3, 1, 1)
    std = torch.tensor(spec["std"]).reshape(1, 3, 1, 1)
    if normalize:
        x.sub_(mean).div_(std)
    # zero padding in pixel space (torchvision pads the raw image before Normalize)
    fill = tuple((-mean / std).flatten().tolist()) if normalize else 0.0
    y = torch.from_numpy(np.concatenate(labels).astype(np.int64))
    info = {"folder": str(folder), "normalized": normalize, "mean": list(spec["mean"]), "std": list(spec["std"])}
    return ArrayDataset(x, y, spec["num_classes"], name, split, RandomCropFlip(4, fill), info)


def cifar10(split: str = "train", *, root=None, normalize: bool = True) -> ArrayDataset:
    """CIFAR-10: 50,000 train / 10,000 test 32x32 RGB images, 10 classes.

    Args:
        split: "train" (``data_batch_1`` ... ``data_batch_5``) or "test" (``test_batch``).
        root: the ``cifar-10-batches-py`` folder or its parent; default :func:`data_dir`.
        normalize: subtract the per-channel mean and divide by the std (``CIFAR10_MEAN``,
            ``CIFAR10_STD``); with False, pixels are in [0, 1].

    Returns:
        float32 images (N, 3, 32, 32) and labels; ``transform`` is the basic augmentation
        (4-pixel zero-padded random crop + horizontal flip, SAM-ON Appendix A.1), which
        ``get_dataset(..., augment=False)`` removes.

    Example:
        >>> ds = cifar10("test", root="/data/cifar")  # doctest: +SKIP
        >>> ds.x.shape, ds.num_classes  # doctest: +SKIP
        (torch.Size([10000, 3, 32, 32]), 10)
    """
    return _read("cifar10", split, root, normalize)


def cifar100(split: str = "train", *, root=None, normalize: bool = True) -> ArrayDataset:
    """CIFAR-100 with its 100 fine labels: 50,000 train / 10,000 test images.

    Args:
        split: "train" or "test" (the files of the same names).
        root: the ``cifar-100-python`` folder or its parent; default :func:`data_dir`.
        normalize: standardize with ``CIFAR100_MEAN`` / ``CIFAR100_STD``; False keeps [0, 1].

    Example:
        >>> ds = cifar100("train", root="/data/cifar")  # doctest: +SKIP
        >>> ds.num_classes  # doctest: +SKIP
        100
    """
    return _read("cifar100", split, root, normalize)

"""Data sets: ``get_dataset(name, split, root=None, augment=False, **kwargs)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from landscape.config import did_you_mean
from landscape.data.base import ArrayDataset
from landscape.data.cifar import cifar10, cifar100
from landscape.data.mnist1d import data_dir, mnist1d
from landscape.data.synthetic import synthetic

_DATASETS: dict[str, Callable[..., ArrayDataset]] = {
    "mnist1d": mnist1d,
    "synthetic": synthetic,
    "cifar10": cifar10,
    "cifar100": cifar100,
}
SPLITS = ("train", "test")


def register_dataset(name: str, fn: Callable[..., ArrayDataset] | None = None, *, replace: bool = False):
    """Make ``fn(split, **kwargs)`` available to :func:`get_dataset` (and ``--dataset NAME``).

    Use as a decorator or call it with the function. ``fn`` takes the split (``"train"`` or
    ``"test"``) as its first argument plus keyword options (``root`` is passed when it takes one)
    and returns an :class:`ArrayDataset` (or any ``Dataset`` the analyses accept).

    Example:
        >>> import torch
        >>> @register_dataset("doc_ramp")
        ... def ramp(split, n=4):
        ...     return ArrayDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.zeros(n, dtype=torch.long), 1)
        >>> len(get_dataset("doc_ramp", "test", n=3))
        3
    """

    def deco(f: Callable[..., ArrayDataset]) -> Callable[..., ArrayDataset]:
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"dataset name must be a non-empty string without ':' (that marks an import path), got {name!r}")
        if not callable(f):
            raise ValueError(f"register_dataset({name!r}): the function must be callable, got {type(f).__name__}")
        if name in _DATASETS and not replace:
            raise ValueError(f"dataset {name!r} registered twice (pass replace=True to replace it)")
        _DATASETS[name] = f
        return f

    return deco if fn is None else deco(fn)


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def get_dataset(name: str, split: str = "train", root=None, augment: bool = False, **kwargs) -> ArrayDataset:
    """Load a data set split into memory.

    Args:
        name: one of ``dataset_names()``.
        split: ``"train"`` or ``"test"``.
        root: data folder (CIFAR: the extracted ``cifar-10-batches-py`` folder or its parent;
            MNIST-1D: cache folder).
        augment: attach the data set's training augmentation (applied per batch by the trainer).
        **kwargs: data-set options (``num_samples``, ``seed``, ``input_shape``...).

    Example:
        >>> ds = get_dataset("synthetic", "train", num_samples=16, input_shape=(4,))
        >>> len(ds)
        16
    """
    if name not in _DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}" + did_you_mean(name, _DATASETS)
            + f"; accepted: {', '.join(dataset_names())}"
        )
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    fn = _DATASETS[name]
    sig = inspect.signature(fn).parameters
    if "root" in sig:
        kwargs["root"] = root
    for key in kwargs:
        if key not in sig:
            accepted = [k for k in sig if k != "split"]
            raise ValueError(
                f"dataset {name!r} has no option {key!r}" + did_you_mean(key, accepted)
                + f"; accepted: {', '.join(accepted)}"
            )
    ds = fn(split, **kwargs)
    if not augment and hasattr(ds, "transform"):
        ds.transform = None
    return ds


__all__ = ["ArrayDataset", "data_dir", "dataset_names", "get_dataset", "register_dataset"]

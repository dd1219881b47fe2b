"""Seeded Gaussian clusters of any input shape (tests and benchmarks)."""

from __future__ import annotations

import math

import torch

from landscape.data.base import ArrayDataset, check_num_samples


def synthetic(
    split: str = "train",
    *,
    num_samples: int = 512,
    input_shape: tuple[int, ...] = (40,),
    num_classes: int = 10,
    noise: float = 1.0,
    seed: int = 0,
) -> ArrayDataset:
    """One Gaussian cluster per class around seeded random centres.

    Train and test share the centres (seed) and differ in the draws, so a model trained on
    ``train`` generalizes to ``test``.

    Example:
        >>> ds = synthetic(num_samples=8, input_shape=(3, 4, 4), num_classes=2)
        >>> ds.x.shape, ds.num_classes
        (torch.Size([8, 3, 4, 4]), 2)
    """
    shape = tuple(int(s) for s in input_shape)
    check_num_samples(num_samples, math.prod(shape), "synthetic")
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, math.prod(shape), generator=g) * 2.0 / math.sqrt(math.prod(shape)) ** 0.5
    g_split = torch.Generator().manual_seed(seed * 1000 + {"train": 1, "test": 2}[split])
    y = torch.randint(0, num_classes, (num_samples,), generator=g_split)
    x = centres[y] + noise * torch.randn(num_samples, math.prod(shape), generator=g_split) / math.sqrt(math.prod(shape)) ** 0.5
    return ArrayDataset(x.reshape(num_samples, *shape), y, num_classes, "synthetic", split)

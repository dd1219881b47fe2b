"""In-memory classification data sets and seeded batch iteration."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class ArrayDataset:
    """Inputs ``x`` (N, ...) float and labels ``y`` (N,) long, held in memory.

    ``transform`` (augmentation) is applied per batch, in torch, with an explicit generator,
    so training is reproducible and analyses (which never augment) see the raw tensors.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str = "data"
    split: str = "train"
    transform: Transform | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.name}: {self.x.shape[0]} inputs but {self.y.shape[0]} labels")
        self.y = self.y.long()

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, n: int | None) -> ArrayDataset:
        """The first ``n`` examples (the sharpness protocol's "first n training examples")."""
        if n is None or n >= len(self):
            return self
        return ArrayDataset(self.x[:n], self.y[:n], self.num_classes, self.name, self.split, None, dict(self.info))

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: bool = False,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches; shuffling and augmentation draw from ``generator`` only."""
        n = len(self)
        if shuffle:
            if generator is None:
                raise ValueError("shuffle=True needs an explicit torch.Generator (no global RNG)")
            order = torch.randperm(n, generator=generator)
        else:
            order = None
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size] if order is not None else slice(start, start + batch_size)
            xb, yb = self.x[idx], self.y[idx]
            if augment and self.transform is not None:
                if generator is None:
                    raise ValueError("augment=True needs an explicit torch.Generator")
                xb = self.transform(xb, generator)
            yield xb, yb

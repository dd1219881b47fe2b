"""In-memory classification data sets and seeded batch iteration."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# Generated data sets are refused above this many input values (4 GiB of float32) before any
# memory is allocated: a typo such as num_samples=10**11 is an error, not an out-of-memory kill.
MAX_VALUES = 2**30


def check_num_samples(num_samples: object, values_per_example: int, dataset: str) -> int:
    """``num_samples`` if it is a positive integer whose data fit :data:`MAX_VALUES`, else ``ConfigError``.

    Example:
        >>> check_num_samples(600, 40, "mnist1d")
        600
        >>> check_num_samples(-4, 40, "mnist1d")
        Traceback (most recent call last):
        ...
        landscape.config.ConfigError: mnist1d: num_samples=-4 is not accepted; accepted: an integer >= 1 (at most 26843545 for 40 values per example)
    """
    from landscape.config import ConfigError

    limit = max(1, MAX_VALUES // max(int(values_per_example), 1))
    ok = isinstance(num_samples, int) and not isinstance(num_samples, bool) and 1 <= num_samples <= limit
    if not ok:
        raise ConfigError(
            f"{dataset}: num_samples={num_samples!r} is not accepted; accepted: an integer >= 1 "
            f"(at most {limit} for {values_per_example} values per example)"
        )
    return num_samples


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

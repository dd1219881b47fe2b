"""Batched, seeded image augmentation in torch: random crop with padding and horizontal flip.

Every random draw comes from the ``torch.Generator`` passed in (no global RNG), so a training
run is reproducible from its seed; the draws are made on the generator's device and the
indexing on the batch's device, so a CPU generator works for CUDA batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def random_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    padding: int = 4,
    fill: float | Sequence[float] = 0.0,
    flip: bool = True,
) -> torch.Tensor:
    """Pad each image by ``padding`` pixels of ``fill``, crop back at a random offset, flip half.

    The batched equivalent of torchvision's ``RandomCrop(H, padding)`` followed by
    ``RandomHorizontalFlip()``, the "basic augmentation" of SAM-ON Appendix A.1. Per image it
    draws a crop offset in ``[0, 2 padding]^2`` and a fair coin for the flip.

    Args:
        x: images (N, C, H, W).
        generator: the only source of randomness.
        padding: pixels added on every side before cropping.
        fill: padding value, a scalar or one per channel (for normalized data, the normalized
            value of a black pixel, ``-mean / std``, reproduces zero padding in pixel space).
        flip: also flip horizontally with probability 1/2.

    Returns:
        A new tensor of the same shape, dtype and device.

    Example:
        >>> x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)
        >>> g = torch.Generator().manual_seed(0)
        >>> random_crop_flip(x, g, padding=0, flip=True).shape
        torch.Size([2, 1, 2, 3])
    """
    if x.ndim != 4:
        raise ValueError(f"random_crop_flip expects images (N, C, H, W), got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = x.shape
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if fill_t.numel() not in (1, c):
        raise ValueError(f"fill needs 1 or {c} values (one per channel), got {fill_t.numel()}")
    padded = fill_t.reshape(1, -1, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = x
    dev = generator.device
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    if flip:
        flipped = (torch.rand(n, generator=generator, device=dev) < 0.5).to(x.device)
    else:
        flipped = torch.zeros(n, dtype=torch.bool, device=x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols_fwd = torch.arange(w, device=x.device)
    # a flip reads the crop's columns right to left: one gather does crop and flip together
    cols = ox[:, None] + torch.where(flipped[:, None], w - 1 - cols_fwd, cols_fwd)  # (N, W)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


@dataclass(frozen=True)
class RandomCropFlip:
    """The ``ArrayDataset.transform`` ``(x_batch, generator) -> x_batch`` for :func:`random_crop_flip`.

    Example:
        >>> t = RandomCropFlip(padding=4, fill=(0.0, 0.0, 0.0))
        >>> t(torch.zeros(2, 3, 8, 8), torch.Generator().manual_seed(0)).shape
        torch.Size([2, 3, 8, 8])
    """

    padding: int = 4
    fill: float | tuple[float, ...] = 0.0
    flip: bool = True

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_crop_flip(x, generator, padding=self.padding, fill=self.fill, flip=self.flip)

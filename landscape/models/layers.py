"""Shared building blocks: the ``norm=`` switch used across the zoo."""

from __future__ import annotations

from torch import nn

NORMS = ("batch", "layer", "group", "none")


def norm_layer(kind: str, channels: int, dim: int = 2, groups: int = 8) -> nn.Module:
    """A normalization layer for ``channels`` feature maps of a ``dim``-D conv net.

    ``layer`` is LayerNorm over channels and positions (GroupNorm with one group), which is
    how "LayerNorm" is usually meant for conv nets; ``group`` uses ``min(groups, channels)``
    groups that divide ``channels``.
    """
    if kind == "batch":
        return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dim](channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; accepted: {', '.join(NORMS)}")

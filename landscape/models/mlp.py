"""A multilayer perceptron on flattened inputs (tests, quadratic-like toy problems)."""

from __future__ import annotations

import math

from torch import nn

from landscape.models.registry import register


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units; optional normalization after each."""

    def __init__(self, input_shape, num_classes, width, depth, norm, activation):
        super().__init__()
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
        if activation not in acts:
            raise ValueError(f"unknown activation {activation!r}; accepted: {', '.join(acts)}")
        layers: list[nn.Module] = [nn.Flatten()]
        d = math.prod(input_shape)
        for _ in range(depth):
            layers.append(nn.Linear(d, width))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(width))
            elif norm == "layer":
                layers.append(nn.LayerNorm(width))
            elif norm != "none":
                raise ValueError(f"unknown norm {norm!r} for mlp; accepted: batch, layer, none")
            layers.append(acts[activation]())
            d = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, num_classes)
        self.stages = ("body", "head")

    def forward(self, x):
        return self.head(self.body(x))


@register("mlp")
def mlp(input_shape=(40,), num_classes=10, width=64, depth=2, norm="none", activation="relu"):
    """MLP; ``norm`` in batch/layer/none."""
    return MLP(tuple(input_shape), num_classes, width, depth, norm, activation)

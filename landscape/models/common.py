"""Helpers shared by the image models of the zoo: initialization and argument checks."""

from __future__ import annotations

from torch import nn

from landscape.models.layers import NORMS


def kaiming_init(model: nn.Module) -> nn.Module:
    """He-normal (fan-out, ReLU) conv weights, zero linear biases; norm layers keep 1 / 0.

    This is the initialization of He et al. (2016) and of the reference WideResNet/ResNeXt
    code bases; PyTorch's default conv init (uniform, fan-in) trains these deep nets worse.

    Example:
        >>> m = kaiming_init(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 2)))
        >>> bool((m[1].bias == 0).all())
        True
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    return model


def image_shape(input_shape, model: str) -> tuple[int, int, int]:
    """Validate an image ``input_shape`` (C, H, W) and return it as a tuple of ints."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{model}: input_shape must be (channels, height, width), got {tuple(input_shape)}")
    return shape


def check_classes(num_classes: int, model: str) -> int:
    """Validate ``num_classes`` (at least 1)."""
    if int(num_classes) < 1:
        raise ValueError(f"{model}: num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def check_norm(norm: str, model: str, accepted: tuple[str, ...] = NORMS) -> str:
    """Validate a ``norm=`` choice against the values ``model`` accepts."""
    if norm not in accepted:
        raise ValueError(f"{model}: unknown norm {norm!r}; accepted: {', '.join(accepted)}")
    return norm

"""VGG with BatchNorm (Simonyan & Zisserman, 2015) for 32x32 inputs, with a single linear head."""

from __future__ import annotations

from torch import nn

from landscape.models.common import check_classes, check_norm, image_shape, kaiming_init
from landscape.models.layers import norm_layer
from landscape.models.registry import register

# convolutions per block (channels 1, 2, 4, 8, 8 x width), VGG paper Table 1, configs A, B, D, E
CONFIGS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


class VGG(nn.Module):
    """Five blocks of [conv3x3-norm-relu] x k + max-pool, global pooling, one linear layer."""

    def __init__(self, input_shape, num_classes, depth, width, norm):
        super().__init__()
        cin = input_shape[0]
        names = []
        for b, (k, mult) in enumerate(zip(CONFIGS[depth], (1, 2, 4, 8, 8))):
            layers: list[nn.Module] = []
            for _ in range(k):
                # no conv bias in front of a norm layer: it would be an exact null direction
                layers += [nn.Conv2d(cin, width * mult, 3, 1, 1, bias=norm == "none"), norm_layer(norm, width * mult), nn.ReLU()]
                cin = width * mult
            layers.append(nn.MaxPool2d(2))
            setattr(self, f"block{b + 1}", nn.Sequential(*layers))
            names.append(f"block{b + 1}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.stages = tuple(names)

    def forward(self, x):
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.fc(self.pool(x).flatten(1))


@register("vgg_bn")
def vgg_bn(input_shape=(3, 32, 32), num_classes=10, depth=16, width=64, norm="batch"):
    """VGG-``depth`` with normalization after every conv, CIFAR head (SAM-ON Table 11 uses VGG-13/16/19).

    The CIFAR variant common in SAM code bases: the 13/8/16 conv layers of configs A/B/D/E in five
    blocks (channels ``width`` x 1, 2, 4, 8, 8, each block ending in 2x2 max-pooling), then a
    single linear layer on the 512-dim feature (no 4096-wide classifier). Inputs must be at
    least 32x32 (five poolings); larger inputs are globally average-pooled. He-initialized.
    Stages: ``block1`` ... ``block5`` (B1-B5); the head ``fc`` is in none.

    Args:
        input_shape: (C, H, W) with H, W >= 32.
        num_classes: output logits.
        depth: 11, 13, 16 or 19.
        width: channels of the first block (64 in the paper).
        norm: batch / layer / group / none (``none`` gives the convolutions biases).

    Example:
        >>> from landscape.models import build_model, describe
        >>> describe(build_model("vgg_bn", depth=11))["parameters"]
        9228362
    """
    shape = image_shape(input_shape, "vgg_bn")
    check_norm(norm, "vgg_bn")
    if depth not in CONFIGS:
        raise ValueError(f"vgg_bn: depth must be one of {', '.join(map(str, CONFIGS))}, got {depth!r}")
    if shape[1] < 32 or shape[2] < 32:
        raise ValueError(f"vgg_bn: inputs must be at least 32x32 (five 2x2 max-poolings), got {shape}")
    if int(width) < 1:
        raise ValueError(f"vgg_bn: width must be >= 1, got {width}")
    model = VGG(shape, check_classes(num_classes, "vgg_bn"), depth, int(width), norm)
    return kaiming_init(model)

"""CIFAR ResNeXt-29 (Xie et al., 2017) in the layout SAM-ON trained (homura code base).

Parameter names follow that code (``conv1``, ``norm1``, ``layer1.0.conv2``,
``layer1.0.downsample.conv``, ``layer1.0.downsample.norm``, ``fc``), so checkpoints of SAM-ON's
``resnext29_32x4d`` load directly.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from landscape.models.common import check_classes, check_norm, image_shape, kaiming_init
from landscape.models.layers import norm_layer
from landscape.models.registry import register


class Bottleneck(nn.Module):
    """1x1 reduce - grouped 3x3 (``cardinality`` groups) - 1x1 expand (x4) + shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, cardinality: int, bottleneck_width: int, norm: str):
        super().__init__()
        bias = norm == "none"
        # the grouped width doubles with each stage: planes 64/128/256 -> 32x4d gives 128/256/512
        width = int(planes * bottleneck_width / 64) * cardinality
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=bias)
        self.norm1 = norm_layer(norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=cardinality, bias=bias)
        self.norm2 = norm_layer(norm, width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=bias)
        self.norm3 = norm_layer(norm, cout)
        self.act = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                OrderedDict(conv=nn.Conv2d(cin, cout, 1, stride, bias=bias), norm=norm_layer(norm, cout))
            )

    def forward(self, x):
        out = self.act(self.norm1(self.conv1(x)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.act(out + self.downsample(x))


class ResNeXt(nn.Module):
    def __init__(self, input_shape, num_classes, depth, cardinality, bottleneck_width, norm):
        super().__init__()
        n = (depth - 2) // 9
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=norm == "none")
        self.norm1 = norm_layer(norm, 64)
        self.act = nn.ReLU()
        cin = 64
        for s, planes in enumerate((64, 128, 256)):
            blocks = []
            for i in range(n):
                blocks.append(Bottleneck(cin, planes, 2 if (s > 0 and i == 0) else 1, cardinality, bottleneck_width, norm))
                cin = planes * Bottleneck.expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.stages = ("layer1", "layer2", "layer3")

    def forward(self, x):
        out = self.act(self.norm1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.pool(out).flatten(1))


@register("resnext_cifar")
def resnext_cifar(input_shape=(3, 32, 32), num_classes=10, depth=29, cardinality=32, bottleneck_width=4, norm="batch"):
    """ResNeXt-``depth`` ``cardinality``x``bottleneck_width``d for CIFAR (Xie et al., 2017, Section 5.3).

    ``depth = 9n + 2``: a 3x3 stem (64 channels), three stages of ``n`` bottleneck blocks with
    outputs 256/512/1024 and grouped 3x3 convs of ``cardinality`` groups of ``bottleneck_width``
    channels (doubling per stage). The default 29-layer 32x4d is SAM-ON's "RNxT" (Appendix A.1).
    He-initialized convolutions. Stages: ``layer1``, ``layer2``, ``layer3`` (B1-B3).

    Args:
        input_shape: (C, H, W); any H, W >= 1 (global pooling).
        num_classes: output logits.
        depth: 9n + 2 with n >= 1 (11, 20, 29).
        cardinality: number of groups of the 3x3 convs.
        bottleneck_width: channels per group in the first stage (the "d" of "32x4d").
        norm: batch / layer / group / none.

    Example:
        >>> from landscape.models import build_model, describe
        >>> describe(build_model("resnext_cifar", depth=11, cardinality=2, bottleneck_width=4))["parameters"]
        761290
    """
    shape = image_shape(input_shape, "resnext_cifar")
    check_norm(norm, "resnext_cifar")
    if not isinstance(depth, int) or depth < 11 or (depth - 2) % 9:
        raise ValueError(f"resnext_cifar: depth must be 9n+2 with n >= 1 (11, 20, 29), got {depth!r}")
    for key, val in (("cardinality", cardinality), ("bottleneck_width", bottleneck_width)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"resnext_cifar: {key} must be an integer >= 1, got {val!r}")
    model = ResNeXt(shape, check_classes(num_classes, "resnext_cifar"), depth, cardinality, bottleneck_width, norm)
    return kaiming_init(model)

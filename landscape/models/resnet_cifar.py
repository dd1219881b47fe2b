"""CIFAR ResNets: He et al.'s ResNet-20/32/56/110 and the common CIFAR ResNet-18.

Both use the same post-activation basic block (conv-norm-relu-conv-norm + shortcut) with the
parameter names of the widely used kuangliu/pytorch-cifar code (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer2.0.shortcut.0``, ``linear``), so foreign state_dicts of that family
load directly (e.g. the ResNet-18 checkpoint shipped with pyautoattack).
"""

from __future__ import annotations

from torch import nn

from landscape.models.common import check_classes, check_norm, image_shape, kaiming_init
from landscape.models.layers import norm_layer
from landscape.models.registry import register


class BasicBlock(nn.Module):
    """Post-activation basic block with a projection (option B) shortcut when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        bias = norm == "none"  # a bias before a norm layer is redundant (a null direction)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.bn2 = norm_layer(norm, cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=bias), norm_layer(norm, cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """3x3 stem (no max-pool), stages of basic blocks, global average pool, linear head."""

    def __init__(self, input_shape, num_classes, widths, blocks, norm):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=bias)
        self.bn1 = norm_layer(norm, widths[0])
        self.relu = nn.ReLU()
        cin = widths[0]
        names = []
        for s, (w, n) in enumerate(zip(widths, blocks)):
            stride = 1 if s == 0 else 2
            layer = nn.Sequential(*[BasicBlock(cin if i == 0 else w, w, stride if i == 0 else 1, norm) for i in range(n)])
            setattr(self, f"layer{s + 1}", layer)
            names.append(f"layer{s + 1}")
            cin = w
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)
        self.stages = tuple(names)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        for name in self.stages:
            out = getattr(self, name)(out)
        return self.linear(self.pool(out).flatten(1))


@register("resnet_cifar")
def resnet_cifar(input_shape=(3, 32, 32), num_classes=10, depth=20, width=16, norm="batch"):
    """He et al. (2016, Section 4.2) CIFAR ResNet-``depth``, ``depth = 6n + 2`` (20, 32, 56, 110).

    Three stages of ``n`` basic blocks with ``width``, 2 ``width``, 4 ``width`` channels (16/32/64
    in the paper). Shortcuts that change shape are projections (option B: 1x1 conv + norm), as in
    the ResNet-56 that SAM-ON (Appendix A.1) trains via the homura code base, not the paper's
    parameter-free option A; this adds 2,752 parameters to ResNet-20 (272,474 with 10 classes).
    Convolutions are He-initialized. Stages: ``layer1``, ``layer2``, ``layer3`` (B1-B3).

    Args:
        input_shape: (C, H, W); any H, W >= 1 (global pooling).
        num_classes: output logits.
        depth: 6n + 2 with n >= 1.
        width: channels of the first stage.
        norm: batch / layer / group / none (``none`` gives the convolutions biases).

    Example:
        >>> from landscape.models import build_model, describe
        >>> describe(build_model("resnet_cifar", depth=20))["parameters"]
        272474
    """
    shape = image_shape(input_shape, "resnet_cifar")
    check_norm(norm, "resnet_cifar")
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet_cifar: depth must be 6n+2 with n >= 1 (20, 32, 56, 110), got {depth!r}")
    if int(width) < 1:
        raise ValueError(f"resnet_cifar: width must be >= 1, got {width}")
    n = (depth - 2) // 6
    w = int(width)
    model = ResNetCifar(shape, check_classes(num_classes, "resnet_cifar"), (w, 2 * w, 4 * w), (n, n, n), norm)
    return kaiming_init(model)


@register("resnet18_cifar")
def resnet18_cifar(input_shape=(3, 32, 32), num_classes=10, width=64, norm="batch"):
    """The common CIFAR ResNet-18 (kuangliu/pytorch-cifar): 3x3 stem, no max-pool, [2, 2, 2, 2].

    Stage widths ``width`` x (1, 2, 4, 8); with the defaults it has exactly 11,173,962 parameters
    and 20 BatchNorm layers, and its parameter names match kuangliu's so such state_dicts load
    (the ResNet-18 of SAM-ON Figure 4 and pyautoattack's example checkpoint). PyTorch default
    initialization, as in that code. Stages: ``layer1`` ... ``layer4`` (B1-B4).

    Example:
        >>> from landscape.models import build_model, describe
        >>> describe(build_model("resnet18_cifar"))["parameters"]
        11173962
    """
    shape = image_shape(input_shape, "resnet18_cifar")
    check_norm(norm, "resnet18_cifar")
    if int(width) < 1:
        raise ValueError(f"resnet18_cifar: width must be >= 1, got {width}")
    w = int(width)
    return ResNetCifar(shape, check_classes(num_classes, "resnet18_cifar"), (w, 2 * w, 4 * w, 8 * w), (2, 2, 2, 2), norm)

"""Wide residual networks (Zagoruyko & Komodakis, 2016): WRN-d-k with pre-activation blocks.

Parameter names follow the widely used xternalz/WideResNet-pytorch layout (``conv1``,
``block1.layer.0.bn1``, ``block1.layer.0.convShortcut``, final ``bn1``, ``fc``), which RobustBench's
CIFAR WideResNets share, so such state_dicts load directly.
"""

from __future__ import annotations

from torch import nn

from landscape.models.common import check_classes, check_norm, image_shape, kaiming_init
from landscape.models.layers import norm_layer
from landscape.models.registry import register


class WideBlock(nn.Module):
    """Pre-activation block: norm-relu-conv3x3-norm-relu-dropout-conv3x3 + shortcut.

    When the shape changes the shortcut is a 1x1 conv applied to the *activated* input
    relu(norm(x)), as in the authors' code (homura, used by SAM-ON, applies it to raw x instead;
    the parameter count is the same).
    """

    def __init__(self, cin: int, cout: int, stride: int, dropout: float, norm: str):
        super().__init__()
        bias = norm == "none"
        self.bn1 = norm_layer(norm, cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn2 = norm_layer(norm, cout)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.equal = cin == cout and stride == 1
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=bias)

    def forward(self, x):
        act = self.relu1(self.bn1(x))
        out = self.conv1(act)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class NetworkBlock(nn.Module):
    """One stage: ``n`` wide blocks in ``self.layer`` (the reference code's nesting)."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, dropout: float, norm: str):
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, dropout, norm) for i in range(n)]
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, input_shape, num_classes, depth, widen_factor, dropout, norm):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=norm == "none")
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout, norm)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout, norm)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout, norm)
        self.bn1 = norm_layer(norm, widths[3])  # the final pre-activation norm
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.stages = ("block1", "block2", "block3")

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(self.pool(out).flatten(1))


@register("wrn")
def wrn(input_shape=(3, 32, 32), num_classes=10, depth=28, widen_factor=10, dropout=0.0, norm="batch"):
    """WideResNet-``depth``-``widen_factor`` (Zagoruyko & Komodakis, 2016, Table 1).

    ``depth = 6n + 4``: a 3x3 stem conv (16 channels), three stages of ``n`` pre-activation
    blocks with 16k, 32k, 64k channels, a final norm-relu, global pooling and a linear head.
    WRN-28-10 is SAM-ON's main model (Section 4, Appendix A.1: no dropout); WRN-16-4 is a
    cheaper configuration from the same paper. He-initialized convolutions.
    Stages: ``block1``, ``block2``, ``block3`` (B1-B3).

    Args:
        input_shape: (C, H, W); any H, W >= 1 (global pooling).
        num_classes: output logits.
        depth: 6n + 4 with n >= 1 (16, 22, 28, 40).
        widen_factor: k, the width multiplier (>= 1).
        dropout: dropout probability between the two convs of a block (the paper used 0.3 for
            some runs; SAM-ON uses 0).
        norm: batch / layer / group / none.

    Example:
        >>> from landscape.models import build_model, describe
        >>> describe(build_model("wrn", depth=16, widen_factor=4))["parameters"]
        2748890
    """
    shape = image_shape(input_shape, "wrn")
    check_norm(norm, "wrn")
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wrn: depth must be 6n+4 with n >= 1 (16, 22, 28, 40), got {depth!r}")
    if not isinstance(widen_factor, int) or widen_factor < 1:
        raise ValueError(f"wrn: widen_factor must be an integer >= 1, got {widen_factor!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"wrn: dropout must be in [0, 1), got {dropout}")
    model = WideResNet(shape, check_classes(num_classes, "wrn"), depth, widen_factor, float(dropout), norm)
    return kaiming_init(model)

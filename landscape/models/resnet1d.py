"""A residual 1-D CNN with BatchNorm for MNIST-1D (40-sample signals)."""

from __future__ import annotations

from torch import nn

from landscape.models.layers import norm_layer
from landscape.models.registry import register


class Block1d(nn.Module):
    """Pre-activation-free basic block: conv-norm-relu-conv-norm + shortcut."""

    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, 3, stride, 1, bias=norm == "none")
        self.bn1 = norm_layer(norm, cout, dim=1)
        self.conv2 = nn.Conv1d(cout, cout, 3, 1, 1, bias=norm == "none")
        self.bn2 = norm_layer(norm, cout, dim=1)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv1d(cin, cout, 1, stride, bias=norm == "none"), norm_layer(norm, cout, dim=1)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet1d(nn.Module):
    def __init__(self, input_shape, num_classes, width, depth, norm):
        super().__init__()
        cin = input_shape[0] if len(input_shape) == 2 else 1
        self.stem = nn.Sequential(
            nn.Conv1d(cin, width, 3, 1, 1, bias=norm == "none"), norm_layer(norm, width, dim=1), nn.ReLU()
        )
        names = []
        c = width
        for s in range(3):
            cout = width * 2**s
            blocks = [Block1d(c if i == 0 else cout, cout, 2 if (s > 0 and i == 0) else 1, norm) for i in range(depth)]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            names.append(f"layer{s + 1}")
            c = cout
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(c, num_classes)
        self.stages = tuple(names)

    def forward(self, x):
        if x.ndim == 2:
            x = x.unsqueeze(1)
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


@register("resnet1d")
def resnet1d(input_shape=(40,), num_classes=10, width=16, depth=1, norm="batch"):
    """Residual 1-D CNN: stem, 3 stages of ``depth`` blocks (widths w, 2w, 4w), global pool.

    ``input_shape`` is ``(length,)`` or ``(channels, length)``; ``norm`` in batch/layer/group/none.
    """
    return ResNet1d(tuple(input_shape), num_classes, width, depth, norm)

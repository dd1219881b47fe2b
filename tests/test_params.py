"""Parameter groups by module type, stage and glob."""

from __future__ import annotations

import pytest
from torch import nn

from landscape.models import build_model
from landscape.params import GroupError, count, mask, norm_parameter_names, select


class Odd(nn.Module):
    """Names that fool substring matching: 'bn' in a linear layer, a LayerNorm called 'ln_1'."""

    def __init__(self):
        super().__init__()
        self.bn_proj = nn.Linear(3, 4)
        self.ln_1 = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 2, bias=False)


def test_norm_by_type_not_by_name():
    m = Odd()
    assert list(select(m, "norm")) == ["ln_1.weight", "ln_1.bias", "gn.weight", "gn.bias"]
    assert list(select(m, "no-norm")) == ["bn_proj.weight", "bn_proj.bias", "head.weight"]
    assert list(select(m, "weights")) == ["bn_proj.weight", "head.weight"]
    assert list(select(m, "biases")) == ["bn_proj.bias"]
    assert norm_parameter_names(m) == {"ln_1.weight", "ln_1.bias", "gn.weight", "gn.bias"}


def test_stages_globs_and_intersections():
    m = build_model("resnet1d", input_shape=(40,), num_classes=10, width=4)
    b3 = select(m, "B3")
    assert b3 and all(n.startswith("layer3.") for n in b3)
    both = select(m, "norm&B2+B3")
    assert both and all(n.split(".")[0] in ("layer2", "layer3") for n in both)
    assert set(both) <= norm_parameter_names(m)
    assert list(select(m, "glob:fc.*")) == ["fc.weight", "fc.bias"]
    assert list(select(m, "glob:fc.bias|stem.0.weight")) == ["stem.0.weight", "fc.bias"]
    assert list(select(m, ["fc.bias"])) == ["fc.bias"]
    assert list(select(m, lambda n, p: n == "fc.weight")) == ["fc.weight"]


def test_frozen_parameters_skipped():
    m = Odd()
    m.ln_1.weight.requires_grad_(False)
    assert "ln_1.weight" not in select(m, "norm")
    assert "ln_1.weight" in select(m, "norm", trainable_only=False)


def test_mask_and_count():
    m = Odd()
    mk = mask(m, "norm")
    assert mk["ln_1.weight"].all() and not mk["head.weight"].any()
    assert count(m, "norm") == 16 and count(build_model("mlp"), "norm") == 0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nrom", "did you mean 'norm'"),
        ("B9", "stages B1..B3"),
        ("glob:", "empty glob"),
        ("norm&glob:head.*", "selects no parameters"),
    ],
)
def test_bad_specs(spec, message):
    m = build_model("resnet1d", input_shape=(40,), num_classes=10, width=4)
    with pytest.raises(GroupError, match=message):
        select(m, spec)


def test_empty_norm_group_says_why_and_stageless_model():
    with pytest.raises(GroupError, match="no normalization layers"):
        select(build_model("mlp"), "norm")
    with pytest.raises(GroupError, match="declares no `stages`"):
        select(Odd(), "B1")
    with pytest.raises(GroupError, match="did you mean 'head.weight'"):
        select(Odd(), ["head.weights"])

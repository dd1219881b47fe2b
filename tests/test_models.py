"""Model zoo: shapes, exact parameter counts (closed forms), norm groups, stages, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape import params
from landscape.models import build_model, describe, model_names

# small configurations: each builds and runs a forward pass in a fraction of a second
SMALL = {
    "resnet_cifar": ({"depth": 8, "width": 4}, (2, 8, 8)),
    "resnet18_cifar": ({"width": 2}, (2, 8, 8)),
    "wrn": ({"depth": 10, "widen_factor": 1}, (2, 8, 8)),
    "resnext_cifar": ({"depth": 11, "cardinality": 2, "bottleneck_width": 1}, (2, 4, 4)),
    "vgg_bn": ({"depth": 11, "width": 2}, (2, 32, 32)),
    "vit": ({"preset": None, "patch_size": 4, "depth": 3, "width": 8, "heads": 2}, (2, 8, 12)),
}
IMAGE_MODELS = tuple(SMALL)
NORM_CHOICES = {name: ("batch", "layer", "group", "none") for name in SMALL} | {"vit": ("layer", "none")}


def small(name, **kw):
    kwargs, shape = SMALL[name]
    return build_model(name, input_shape=shape, num_classes=5, **{**kwargs, **kw}), shape


def norm_affine_names(model):
    """Reference for the "norm" group: affine params of norm modules, found by type here."""
    kinds = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    return {f"{mn}.{pn}" for mn, m in model.named_modules() if isinstance(m, kinds) for pn, _ in m.named_parameters(recurse=False)}


def test_all_models_registered():
    assert set(IMAGE_MODELS) <= set(model_names())


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_forward_shape_and_backward(name):
    torch.manual_seed(0)
    model, shape = small(name)
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 5)
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.landscape_spec["name"] == name


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_stages_partition_blocks(name):
    model, _ = small(name)
    modules = dict(model.named_modules())
    assert len(model.stages) >= 3 and all(s in modules for s in model.stages)
    groups = [set(params.select(model, f"B{i + 1}")) for i in range(len(model.stages))]
    assert all(groups) and sum(map(len, groups)) == len(set().union(*groups))  # nonempty, disjoint
    # every parameter inside a stage prefix is in that stage's group, and nothing else is
    for prefix, group in zip(model.stages, groups):
        assert group == {n for n, _ in model.named_parameters() if n.startswith(prefix + ".")}
    with pytest.raises(params.GroupError, match="does not exist"):
        params.select(model, f"B{len(model.stages) + 1}")


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_norm_group_is_affine_params_of_norm_layers(name):
    for norm in NORM_CHOICES[name]:
        model, _ = small(name, norm=norm)
        expected = norm_affine_names(model)
        if norm == "none":
            assert expected == set() and params.count(model, "norm") == 0
            assert not any(params.is_norm_module(m) for m in model.modules())
            with pytest.raises(params.GroupError):
                params.select(model, "norm")
        else:
            assert expected and set(params.select(model, "norm")) == expected
            kind = {"batch": nn.BatchNorm2d, "layer": (nn.GroupNorm, nn.LayerNorm), "group": nn.GroupNorm}[norm]
            assert all(isinstance(m, kind) for m in model.modules() if params.is_norm_module(m))


@pytest.mark.parametrize("name", ["resnet_cifar", "resnet18_cifar", "wrn", "resnext_cifar", "vgg_bn"])
def test_convs_have_bias_only_without_norm(name):
    # a bias right before a norm layer is an exact null direction of the loss (zero gradient)
    for norm, want in (("batch", False), ("none", True)):
        model, _ = small(name, norm=norm)
        assert all((m.bias is not None) == want for m in model.modules() if isinstance(m, nn.Conv2d))


# ---- exact parameter counts, from closed forms written independently of the code --------------


def resnet_cifar_count(depth, classes=10, w=16):
    n, total, cin = (depth - 2) // 6, 3 * 9 * w + 2 * w, w
    for cout in (w, 2 * w, 4 * w):
        for i in range(n):
            c = cin if i == 0 else cout
            total += 9 * c * cout + 2 * cout + 9 * cout * cout + 2 * cout
            if c != cout:
                total += c * cout + 2 * cout  # option B projection: 1x1 conv + norm
        cin = cout
    return total + cin * classes + classes


def wrn_count(depth, k, classes=10):
    n, widths = (depth - 4) // 6, [16, 16 * k, 32 * k, 64 * k]
    total = 3 * 9 * 16
    for cin, cout in zip(widths, widths[1:]):
        for i in range(n):
            c = cin if i == 0 else cout
            total += 2 * c + 9 * c * cout + 2 * cout + 9 * cout * cout + (c * cout if c != cout else 0)
    return total + 2 * widths[-1] + widths[-1] * classes + classes


def vit_count(tokens, patch, d, depth, classes, channels=3):
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return channels * patch * patch * d + d + d + (tokens + 1) * d + depth * block + 2 * d + d * classes + classes


def test_known_parameter_counts():
    assert resnet_cifar_count(20) == 272_474  # option A (parameter-free) would be 269,722
    cases = [
        (("resnet_cifar", {"depth": 20}), resnet_cifar_count(20)),
        (("resnet_cifar", {"depth": 56, "num_classes": 100}), resnet_cifar_count(56, 100)),
        (("resnet18_cifar", {}), 11_173_962),  # kuangliu/pytorch-cifar, pyautoattack's checkpoint
        (("wrn", {"depth": 28, "widen_factor": 10}), 36_479_194),  # "36.5M" (Zagoruyko & Komodakis Table 4)
        (("wrn", {"depth": 28, "widen_factor": 10, "num_classes": 100}), wrn_count(28, 10, 100)),
        (("wrn", {"depth": 16, "widen_factor": 4}), wrn_count(16, 4)),  # "2.7M"
        (("resnext_cifar", {}), 4_775_754),  # 29-layer 32x4d
        (("vgg_bn", {"depth": 16}), 14_728_266 - 4224),  # kuangliu VGG16 minus its 4,224 conv biases
        (("vit", {"preset": "vit-t"}), vit_count(64, 4, 192, 12, 10)),
        (("vit", {"preset": "vit-s", "num_classes": 100}), vit_count(64, 4, 384, 12, 100)),
    ]
    assert wrn_count(28, 10) == 36_479_194 and vit_count(64, 4, 192, 12, 10) == 5_362_762
    with torch.device("meta"):  # counting needs no memory and no initialization
        for (name, kw), want in cases:
            assert describe(build_model(name, **kw))["parameters"] == want, (name, kw)


def kuangliu_resnet18_shapes(classes=10):
    """The state_dict layout of kuangliu/pytorch-cifar's ResNet18 (BasicBlock, [2, 2, 2, 2])."""

    def bn(prefix, c):
        return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}

    shapes = {"conv1.weight": (64, 3, 3, 3), **bn("bn1", 64)}
    cin = 64
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p, c = f"layer{layer}.{b}", cin if b == 0 else planes
            shapes |= {f"{p}.conv1.weight": (planes, c, 3, 3), **bn(f"{p}.bn1", planes),
                       f"{p}.conv2.weight": (planes, planes, 3, 3), **bn(f"{p}.bn2", planes)}
            if c != planes:
                shapes |= {f"{p}.shortcut.0.weight": (planes, c, 1, 1), **bn(f"{p}.shortcut.1", planes)}
        cin = planes
    return shapes | {"linear.weight": (classes, 512), "linear.bias": (classes,)}


def test_resnet18_loads_foreign_kuangliu_state_dict():
    model = build_model("resnet18_cifar")
    ref = kuangliu_resnet18_shapes()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == ref
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 20
    g = torch.Generator().manual_seed(0)
    foreign = {k: torch.randn(s, generator=g) if s else torch.tensor(7) for k, s in ref.items()}
    model.load_state_dict(foreign, strict=True)
    assert torch.equal(model.layer2[0].shortcut[1].running_var, foreign["layer2.0.shortcut.1.running_var"])
    assert params.count(model, "norm") == 2 * sum(s[0] for k, s in ref.items() if k.endswith("running_mean"))


def test_foreign_layouts_of_wrn_resnext_vit():
    wrn = build_model("wrn", depth=10, widen_factor=2)  # xternalz / RobustBench names
    assert {"conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
            "block3.layer.0.conv2.weight", "bn1.weight", "fc.bias"} <= set(wrn.state_dict())
    rnx = build_model("resnext_cifar", depth=11, cardinality=2)  # SAM-ON (homura) names
    assert {"conv1.weight", "norm1.weight", "layer1.0.conv2.weight", "layer1.0.norm3.bias",
            "layer2.0.downsample.conv.weight", "layer2.0.downsample.norm.weight", "fc.weight"} <= set(rnx.state_dict())
    assert rnx.layer1[0].conv2.groups == 2 and rnx.layer1[0].conv2.in_channels == 2 * 4
    with torch.device("meta"):
        vit = build_model("vit", preset="vit-t")  # timm names
    sd = vit.state_dict()
    assert sd["pos_embed"].shape == (1, 65, 192) and sd["blocks.11.attn.qkv.weight"].shape == (576, 192)
    assert {"cls_token", "patch_embed.proj.weight", "blocks.0.norm1.weight", "blocks.0.mlp.fc2.bias",
            "norm.weight", "head.weight"} <= set(sd)
    assert vit.stages == tuple(f"blocks.{i}" for i in range(12))


def test_vit_hvp_forward_over_reverse_matches_double_backward(f64):
    # Hessian-vector products by jvp-of-grad (the objective's route) must work through attention
    torch.manual_seed(0)
    model, shape = small("vit")
    x, y = torch.randn(4, *shape), torch.tensor([0, 1, 2, 3])
    names = list(dict(model.named_parameters()))
    theta = {n: p.detach() for n, p in model.named_parameters()}
    v = {n: torch.randn_like(p) for n, p in theta.items()}

    def loss(th):
        return nn.functional.cross_entropy(torch.func.functional_call(model, th, (x,)), y)

    _, hvp_fwd = torch.func.jvp(torch.func.grad(loss), (theta,), (v,))
    leaves = [p.clone().requires_grad_(True) for p in theta.values()]
    g = torch.autograd.grad(loss(dict(zip(names, leaves))), leaves, create_graph=True)
    hvp_rev = torch.autograd.grad(sum((gi * v[n]).sum() for gi, n in zip(g, names)), leaves)
    for n, h in zip(names, hvp_rev):
        torch.testing.assert_close(hvp_fwd[n], h, rtol=1e-9, atol=1e-11)


# ---- bad options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("wrn", {"widen_factr": 2}, "did you mean 'widen_factor'"),
        ("wrn", {"depth": 27}, "6n\\+4"),
        ("wrn", {"widen_factor": 0}, "widen_factor"),
        ("wrn", {"dropout": 1.0}, "dropout"),
        ("resnet_cifar", {"depth": 21}, "6n\\+2"),
        ("resnet_cifar", {"norm": "bn"}, "accepted: batch, layer, group, none"),
        ("resnet18_cifar", {"input_shape": (32, 32)}, "channels, height, width"),
        ("resnet18_cifar", {"num_classes": 0}, "num_classes"),
        ("resnext_cifar", {"depth": 28}, "9n\\+2"),
        ("resnext_cifar", {"cardinality": 0}, "cardinality"),
        ("vgg_bn", {"depth": 12}, "11, 13, 16, 19"),
        ("vgg_bn", {"input_shape": (3, 16, 16)}, "at least 32x32"),
        ("vit", {"preset": "vit-b"}, "vit-t, vit-s"),
        ("vit", {"heads": 5}, "not divisible by heads"),
        ("vit", {"patch_size": 5}, "5x5 patches"),
        ("vit", {"image_size": 64}, "disagrees with input_shape"),
        ("vit", {"preset": None, "depth": 2}, "patch_size is required"),
        ("vit", {"norm": "batch"}, "accepted: layer, none"),
        ("vitt", {}, "did you mean 'vit'"),
    ],
)
def test_bad_options_are_refused_clearly(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, **kwargs)

"""Vision Transformer (Dosovitskiy et al., 2021) with pre-norm blocks, for small images.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.0.norm1``, ``blocks.0.attn.qkv``, ``blocks.0.mlp.fc1``, ``norm``, ``head``),
the implementation SAM-ON trained (Appendix A.1), so timm state_dicts of the same size load.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from landscape.models.common import check_classes, check_norm, image_shape
from landscape.models.registry import register

#: SAM-ON Appendix A.1: timm ViT-T / ViT-S adapted to CIFAR with image size 32, patch size 4.
PRESETS = {
    "vit-t": {"patch_size": 4, "depth": 12, "width": 192, "heads": 3},
    "vit-s": {"patch_size": 4, "depth": 12, "width": 384, "heads": 6},
}
NORMS = ("layer", "none")


def _norm(kind: str, width: int) -> nn.Module:
    # eps as in timm's ViT, so foreign weights give the same outputs
    return nn.LayerNorm(width, eps=1e-6) if kind == "layer" else nn.Identity()


class Attention(nn.Module):
    """Multi-head self-attention written out (softmax(q k^T / sqrt(d)) v).

    Not ``scaled_dot_product_attention``: its fused CUDA kernels lack forward-mode AD and
    double backward, which Hessian-vector products (jvp of grad) need.
    """

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, width)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, norm: str):
        super().__init__()
        self.norm1 = _norm(norm, width)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = _norm(norm, width)
        self.mlp = Mlp(width, int(width * mlp_ratio), dropout)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, patch_size, patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, tokens, width)


class VisionTransformer(nn.Module):
    def __init__(self, input_shape, num_classes, patch_size, depth, width, heads, mlp_ratio, dropout, norm):
        super().__init__()
        c, h, w = input_shape
        tokens = (h // patch_size) * (w // patch_size)
        self.patch_embed = PatchEmbed(c, patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, width))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(width, heads, mlp_ratio, dropout, norm) for _ in range(depth)])
        self.norm = _norm(norm, width)
        self.head = nn.Linear(width, num_classes)
        self.stages = tuple(f"blocks.{i}" for i in range(depth))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(self.pos_drop(x + self.pos_embed))
        return self.head(self.norm(x)[:, 0])  # classify from the class token


@register("vit")
def vit(
    input_shape=(3, 32, 32),
    num_classes=10,
    preset="vit-t",
    image_size=None,
    patch_size=None,
    depth=None,
    width=None,
    heads=None,
    mlp_ratio=4.0,
    dropout=0.0,
    norm="layer",
):
    """ViT with a class token, learned position embedding and pre-norm (LayerNorm) blocks.

    ``preset`` fills ``patch_size``, ``depth``, ``width`` and ``heads`` (SAM-ON Appendix A.1:
    image 32, patch 4; ViT-T width 192, depth 12, 3 heads; ViT-S width 384, depth 12, 6 heads);
    any of them passed explicitly overrides the preset; with ``preset=None`` all four are needed.
    Stages are the transformer blocks, one each: ``blocks.0`` ... (B1 = first block, ..., B12);
    the embeddings, the final norm and the head belong to no stage.

    Args:
        input_shape: (C, H, W); H and W divisible by ``patch_size``.
        num_classes: output logits.
        preset: "vit-t", "vit-s" or None.
        image_size: optional, must equal H and W (kept for parity with timm/SAM-ON configs).
        patch_size, depth, width, heads: the architecture; ``width`` divisible by ``heads``.
        mlp_ratio: hidden width of the MLP relative to ``width``.
        dropout: dropout on attention weights, projections, MLP and embeddings (timm default 0).
        norm: "layer" (LayerNorm, eps 1e-6) or "none".

    Example:
        >>> from landscape.models import build_model, describe
        >>> describe(build_model("vit", preset="vit-t"))["parameters"]
        5362762
    """
    shape = image_shape(input_shape, "vit")
    check_norm(norm, "vit", NORMS)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"vit: unknown preset {preset!r}; accepted: {', '.join(PRESETS)}, None")
    arch = dict(PRESETS[preset]) if preset is not None else {}
    for key, val in (("patch_size", patch_size), ("depth", depth), ("width", width), ("heads", heads)):
        if val is not None:
            arch[key] = val
        if key not in arch:
            raise ValueError(f"vit: {key} is required when preset=None")
        if not isinstance(arch[key], int) or arch[key] < 1:
            raise ValueError(f"vit: {key} must be an integer >= 1, got {arch[key]!r}")
    p = arch["patch_size"]
    if image_size is not None and (int(image_size) != shape[1] or int(image_size) != shape[2]):
        raise ValueError(f"vit: image_size={image_size} disagrees with input_shape={shape}")
    if shape[1] % p or shape[2] % p:
        raise ValueError(f"vit: image {shape[1]}x{shape[2]} is not divisible into {p}x{p} patches")
    if arch["width"] % arch["heads"]:
        raise ValueError(f"vit: width={arch['width']} is not divisible by heads={arch['heads']}")
    if not (mlp_ratio > 0 and math.isfinite(mlp_ratio)):
        raise ValueError(f"vit: mlp_ratio must be > 0, got {mlp_ratio}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"vit: dropout must be in [0, 1), got {dropout}")
    return VisionTransformer(
        shape, check_classes(num_classes, "vit"), p, arch["depth"], arch["width"], arch["heads"],
        float(mlp_ratio), float(dropout), norm,
    )

"""Perceiver resampler (Flamingo, Alayrac et al. 2022; open_flamingo `helpers.py`).

It turns a variable number of ViT patch features per image into a fixed, small set of visual tokens:

    features [B, M, P, vision_width]  --proj-->  [B, M, P, dim]
    latents  [num_latents, dim] (learned), copied for every image
    depth x { latents = latents + Attn(q=latents, kv=[features; latents]);  latents = latents + FF(latents) }
    out = LayerNorm(latents)                                        [B, M, num_latents, dim]

M is the number of images per sample; every image is resampled independently. `dim` is the language model's
hidden size, so the gated cross-attention layers can read the latents without a further projection.

`PatchProjector` is the measured alternative (`model.resampler=linear`): no resampling, every patch feature becomes
one visual token (a linear projection and a LayerNorm, as LLaVA's projector). At initialisation the perceiver's
latents attend almost uniformly to [patches; latents], so every latent starts as a blend of all patches in which
"which colour goes with which shape" is lost, and our short CPU runs never unlearn it (README, "Does the captioner
read the image?"). The projector keeps each patch (or oracle object) its own token.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .attention import attention


def feed_forward(dim: int, mult: float) -> nn.Sequential:
    """Pre-LN MLP without biases, exactly as open_flamingo's `FeedForward`."""
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., L, heads * dim_head] -> [..., heads, L, dim_head]."""
    *lead, length, inner = x.shape
    return x.view(*lead, length, heads, inner // heads).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[..., heads, L, dim_head] -> [..., L, heads * dim_head]."""
    *lead, heads, length, dim_head = x.shape
    return x.transpose(-3, -2).reshape(*lead, length, heads * dim_head)


class PerceiverAttention(nn.Module):
    """Latents attend to the concatenation [media features; latents] (the latents also see themselves)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        # media [B, M, P, dim], latents [B, M, n, dim] -> update for the latents [B, M, n, dim]
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = split_heads(self.to_q(latents), self.heads)
        k, v = self.to_kv(torch.cat([media, latents], dim=-2)).chunk(2, dim=-1)
        k, v = split_heads(k, self.heads), split_heads(v, self.heads)
        # No mask: every latent may look at every patch of its own image and at every latent. The images share one
        # batch axis: SDPA's fused kernel needs 4-D input (on 5-D it falls back to its math path, 3x slower here).
        out = attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1))
        return self.to_out(merge_heads(out.unflatten(0, q.shape[:2])))


class PerceiverResampler(nn.Module):
    """[B, M, P, vision_width] patch features -> [B, M, num_latents, dim] visual tokens."""

    def __init__(self, vision_width: int, dim: int, depth: int = 6, heads: int = 8, dim_head: int = 64,
                 num_latents: int = 64, ff_mult: float = 4.0):
        super().__init__()
        # open_flamingo runs the resampler at the vision width and projects inside the cross-attention; we
        # project once here so that everything downstream lives in the language model's width.
        self.proj_in = nn.Linear(vision_width, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads, dim_head), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    @property
    def num_latents(self) -> int:
        return self.latents.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4:
            raise ValueError(f"expected features [B, num_images, P, vision_width], got {tuple(features.shape)}")
        media = self.proj_in(features)
        b, m = media.shape[:2]
        latents = self.latents.expand(b, m, -1, -1)
        for attn, ff in self.layers:
            latents = latents + attn(media, latents)
            latents = latents + ff(latents)
        return self.norm(latents)


class PatchProjector(nn.Module):
    """[B, M, P, vision_width] patch features -> [B, M, P, dim] visual tokens, one per patch (no resampling)."""

    def __init__(self, vision_width: int, dim: int):
        super().__init__()
        self.proj_in = nn.Linear(vision_width, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4:
            raise ValueError(f"expected features [B, num_images, P, vision_width], got {tuple(features.shape)}")
        return self.norm(self.proj_in(features))

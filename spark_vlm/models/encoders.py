"""The two stage-1 towers, trained from scratch: a ViT (patch tokens, no CLS) and a bidirectional text
Transformer. Both are stacks of the same pre-LN block with scaled dot-product attention (`attention.py`); masks
are passed explicitly as arguments, never stored on the layers.

The text tower runs its linear layers on the real tokens only ("unpadding", as in MosaicBERT): captions are short
beside the padded batch (on the built-in scenes 8.2 real tokens in a batch trimmed to 24.7), and every per-token
operation (the QKV and output projections, the MLP, the layer norms) would spend most of its arithmetic on padding.
Only attention needs the [batch, length] grid, so the block scatters q, k, v onto it and gathers the result back.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from transformers.modeling_layers import GradientCheckpointingLayer  # what `activation_checkpointing_enable()` wraps

from .attention import attention


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, W] (key_padding_mask [B, L] optional, True = a real token), or packed: x [N, W], the real tokens
        of a [B, L] grid in row-major order, with key_padding_mask saying where they sit. Output shaped as x."""
        qkv = self.qkv(x)
        packed = x.dim() == 2
        if packed:  # onto the grid for attention; padding rows are zeros, and no query attends to them
            grid = qkv.new_zeros(*key_padding_mask.shape, qkv.shape[-1])
            grid[key_padding_mask] = qkv
            qkv = grid
        b, n, w = *qkv.shape[:2], qkv.shape[-1] // 3
        q, k, v = qkv.view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        # A boolean mask where True = may attend (as SDPA's), broadcast over heads and queries.
        attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        out = attention(q, k, v, attn_mask).transpose(1, 2)  # [B, L, heads, d]
        return self.proj(out[key_padding_mask].flatten(1) if packed else out.reshape(b, n, w))


class Block(GradientCheckpointingLayer):
    """Pre-LN Transformer block: x + attn(ln(x)), then x + mlp(ln(x)). x is [B, L, W] or packed [N, W] (Attention)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_padding_mask)
        return x + self.mlp(self.ln_2(x))


def conv_stem(patch_size: int, width: int) -> nn.Sequential:
    """Early convolutions in place of the patchify stem ("Early convolutions help transformers see better", Xiao
    et al. 2021): log2(patch_size) 3x3 stride-2 convolutions (24, 48, 96, ... channels), each with GroupNorm and
    ReLU, then a 1x1 convolution to the width, so the token grid is the patchify stem's. GroupNorm rather than the
    paper's BatchNorm: no running statistics, so an image's features never depend on its batch or on train/eval
    mode (stage 2 reads this tower frozen)."""
    if patch_size < 2 or patch_size & (patch_size - 1):
        raise ValueError(f"vision_stem=conv needs patch_size to be a power of 2, got {patch_size}")
    layers, channels = [], 3
    for i in range(int(math.log2(patch_size))):
        out = 24 * 2 ** i
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers, nn.Conv2d(channels, width, 1))


class VisionTransformer(nn.Module):
    """ViT f_v: image [B, 3, H, W] -> patch features [B, P, width]. No CLS token (SPARC pools by mean).
    `stem`: "patch" (the ViT's patch_size x patch_size patchify) or "conv" (conv_stem, same token grid)."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_ratio: float,
                 stem: str = "patch"):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        self.num_patches = (image_size // patch_size) ** 2
        if stem == "patch":
            self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        elif stem == "conv":
            self.patch_embed = conv_stem(patch_size, width)
        else:
            raise ValueError(f"unknown vision stem {stem!r}; choose 'patch' or 'conv'")
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_post = nn.LayerNorm(width)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # [B, P, width]
        if x.shape[1] != self.num_patches:
            raise ValueError(f"expected {self.num_patches} patches, got {x.shape[1]} (wrong image size?)")
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class TextTransformer(nn.Module):
    """Bidirectional text encoder f_t: token ids [B, L] + mask -> token features [B, L, width]. Only the real
    tokens go through the blocks (packed, see the module docstring); padding positions hold their normed embedding."""

    def __init__(self, vocab_size: int, max_len: int, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.max_len = max_len
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.randn(1, max_len, width) * 0.01)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"text length {length} exceeds max_text_len {self.max_len}")
        mask = attention_mask.bool()
        # A caption with no real token would give a fully masked attention row (NaN in SDPA); let it
        # attend to everything instead. Its tokens are excluded downstream by the mask anyway.
        mask = mask | ~mask.any(dim=1, keepdim=True)
        x = self.token_embed(input_ids) + self.pos_embed[:, :length]  # [B, L, W]
        h = x[mask]  # [N, W]: the real tokens, packed
        for block in self.blocks:
            h = block(h, mask)
        # Padding keeps its input embedding: a finite, non-zero vector (a zero one would give NaN to any
        # x / |x| downstream that masks only afterwards), excluded by the mask wherever it matters.
        return self.ln_final(x.index_put((mask,), h))

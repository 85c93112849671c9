"""Gated cross-attention dense blocks and the wrapper that puts one in front of a frozen decoder layer.

    x = x + tanh(alpha_attn) * MaskedCrossAttention(x, visual latents)
    x = x + tanh(alpha_ff)   * FeedForward(x)
    x = original_decoder_layer(x, ...)

Both gates start at 0, so at initialisation every block adds exactly 0 and the model is the frozen LM.

How the visual latents and the masks reach the layers
-----------------------------------------------------
Nothing is stored on the modules between calls. `SparkFlamingo` builds one `MediaContext` per forward call and
passes it as the keyword argument `flamingo_media=` to the Hugging Face *base model* (`GPT2Model`, `LlamaModel`,
`OPTModel`, ...). In transformers 5 every base model forwards its unknown `**kwargs` to each decoder layer (see
e.g. `LlamaModel.forward`: `decoder_layer(hidden_states, ..., **kwargs)`), so the argument arrives at our
`FlamingoDecoderLayer`, which pops it before calling the original layer. Compared to running the layer loop
ourselves this keeps each family's own causal/padding masks, rotary or learned positions and KV-cache logic,
and compared to setting attributes on the layers (open_flamingo's `condition_vis_x`) it is safe under activation
checkpointing (the recompute gets the same argument), ZeRO-3 (only parameters live on modules) and beam search
(the context is rebuilt per step, so there is nothing to reorder).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .perceiver import feed_forward, merge_heads, split_heads


@dataclass
class MediaContext:
    """Per-call inputs of the gated cross-attention layers (built by `MediaContext.build`).

    latents:   [B, M, n, dim] resampled visual tokens of the M images of each sample.
    attn_mask: [B, 1, T, M*n] bool, True where text token t may attend to a latent: only the latents of the most
               recent `<image>` at or before t. Rows of tokens without an image are all True (a defined softmax);
               their output is replaced by exact zeros using `has_media`.
    has_media: [B, T, 1] bool, False for tokens that come before any `<image>`.
    kv:        optional {decoder layer index: (k, v)} with k, v [B, heads, M*n, dim_head], the cross-attention
               keys/values computed once per `generate()` call instead of once per generated token.
    """

    latents: torch.Tensor
    attn_mask: torch.Tensor
    has_media: torch.Tensor
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def build(cls, latents: torch.Tensor, media_index: torch.Tensor,
              kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> "MediaContext":
        """media_index [B, T] long: 1-based index of the latest `<image>` at or before each token, 0 if none."""
        _, num_media, num_latents = latents.shape[:3]
        # Media index of every key: image 1's n latents, then image 2's, ...
        key_media = torch.arange(1, num_media + 1, device=latents.device).repeat_interleave(num_latents)
        has_media = media_index > 0
        attn_mask = (media_index[:, :, None] == key_media) | ~has_media[:, :, None]
        return cls(latents=latents, attn_mask=attn_mask[:, None], has_media=has_media[:, :, None], kv=kv)


class MaskedCrossAttention(nn.Module):
    """Text queries attend to the latents of their own (most recent) image only."""

    def __init__(self, dim: int, dim_visual: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, 2 * inner, bias=False)
        # No bias anywhere: a token that sees no image must produce an exactly-zero update.
        self.to_out = nn.Linear(inner, dim, bias=False)

    def project_kv(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """latents [B, M, n, dim_visual] -> keys, values [B, heads, M*n, dim_head]."""
        k, v = self.to_kv(latents.flatten(1, 2)).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x: torch.Tensor, media: MediaContext,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q = split_heads(self.to_q(self.norm(x)), self.heads)
        k, v = kv if kv is not None else self.project_kv(media.latents)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=media.attn_mask)
        out = self.to_out(merge_heads(out))
        # Exact zeros (not a softmax over nothing) for tokens before the first image.
        return torch.where(media.has_media, out, torch.zeros((), dtype=out.dtype, device=out.device))


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo's GATED XATTN-DENSE block: masked cross-attention then a feed-forward, each behind a tanh gate."""

    def __init__(self, dim: int, dim_visual: int, heads: int, dim_head: int, ff_mult: float):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, heads, dim_head)
        # Shape [1], not 0-dim: DeepSpeed broadcasts parameters viewed as bytes, which a 0-dim tensor refuses.
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: MediaContext,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        # Gates cast to x's dtype keep the hidden states' dtype; tanh(0) * finite = 0, so x is unchanged.
        x = x + self.attn_gate.tanh().to(x.dtype) * self.attn(x, media, kv)
        return x + self.ff_gate.tanh().to(x.dtype) * self.ff(x)


class FlamingoDecoderLayer(nn.Module):
    """Wraps one frozen decoder layer of the LM: [optional gated xattn block] -> original layer.

    Every decoder layer is wrapped (so the LM stays uniform); only every N-th one owns a cross-attention block.
    The call signature is the original layer's plus the keyword `flamingo_media`; when it is absent (the LM used
    on its own) the wrapper is a plain pass-through.

    Activation checkpointing is done here rather than by Hugging Face's `GradientCheckpointingLayer`, because
    that one only checkpoints modules in training mode and the frozen LM is always kept in eval mode (no dropout).
    We checkpoint whenever gradients are being recorded, wrapping xattn + layer in one non-reentrant checkpoint
    (keyword arguments, including the `MediaContext`, are simply replayed on recompute).
    """

    def __init__(self, decoder_layer: nn.Module, layer_idx: int, gated_xattn: GatedCrossAttentionBlock | None):
        super().__init__()
        self.decoder_layer = decoder_layer
        self.gated_xattn = gated_xattn
        self.layer_idx = layer_idx  # key of this layer's entry in `MediaContext.kv`
        self.activation_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, *args, flamingo_media: MediaContext | None = None, **kwargs):
        if self.activation_checkpointing and torch.is_grad_enabled():
            if kwargs.get("use_cache"):
                # The recompute would append this step's keys/values to the cache a second time.
                raise ValueError("activation checkpointing cannot be combined with a KV cache")
            return checkpoint(self._forward, hidden_states, *args, flamingo_media=flamingo_media,
                              use_reentrant=False, **kwargs)
        return self._forward(hidden_states, *args, flamingo_media=flamingo_media, **kwargs)

    def _forward(self, hidden_states: torch.Tensor, *args, flamingo_media: MediaContext | None = None, **kwargs):
        if self.gated_xattn is not None and flamingo_media is not None:
            kv = flamingo_media.kv.get(self.layer_idx) if flamingo_media.kv is not None else None
            hidden_states = self.gated_xattn(hidden_states, flamingo_media, kv)
        return self.decoder_layer(hidden_states, *args, **kwargs)

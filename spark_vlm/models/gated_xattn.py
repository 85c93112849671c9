"""Gated cross-attention dense blocks and the wrapper that puts one in front of a frozen decoder layer.

    x = x + tanh(alpha_attn) * MaskedCrossAttention(x, visual latents)
    x = x + tanh(alpha_ff)   * FeedForward(x)
    x = original_decoder_layer(x, ...)

Both gates start at 0, so at initialisation every block adds exactly 0 and the model is the frozen LM.

How the visual latents and the masks reach the layers
-----------------------------------------------------
`SparkFlamingo` builds one `MediaContext` per forward call and attaches it to every `FlamingoDecoderLayer` for the
duration of that one call (`attach_media`, cleared in a `finally`), then calls the Hugging Face *base model*
(`GPT2Model`, `LlamaModel`, ...). This does not rely on the base model forwarding extra keyword arguments to its
decoder layers, which several families (Falcon, BLOOM, GPT-Neo, MPT) do not do. Compared to running the layer loop
ourselves this keeps each family's own causal/padding masks, rotary/learned/ALiBi positions and KV-cache logic.
Each layer reads the context when it is called and hands it to its (possibly checkpointed) body as an argument,
so an activation-checkpointing recompute in the backward pass, after the context was detached, gets the same
context. Nothing outlives the call, so ZeRO-3 (only parameters live on modules) and beam search (the context is
rebuilt per step, nothing to reorder) are unaffected.

Every xattn layer records in `MediaContext.ran` that it ran; `SparkFlamingo` checks after each call that all of
them did, so an LM whose decoder layers we failed to reach can never train silently blind.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .attention import attention
from .perceiver import feed_forward, merge_heads, split_heads


@dataclass
class MediaContext:
    """Per-call inputs of the gated cross-attention layers (built by `MediaContext.build`).

    latents:   [B, M, n, dim] resampled visual tokens of the M images of each sample.
    attn_mask: [B, 1, T, M*n] bool, True where text token t may attend to a latent: only the latents of the most
               recent `<image>` at or before t. Rows of tokens without an image are all True (a defined softmax);
               their output is replaced by exact zeros using `has_media`. None with one image (all True).
    has_media: [B, T, 1] bool, False for tokens that come before any `<image>`.
    kv:        optional {decoder layer index: (k, v)} with k, v [B, heads, M*n, dim_head], the cross-attention
               keys/values computed once per `generate()` call instead of once per generated token.
    """

    latents: torch.Tensor
    attn_mask: torch.Tensor | None
    has_media: torch.Tensor
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    ran: set[int] = field(default_factory=set)  # decoder layer indices whose xattn block used this context

    @classmethod
    def build(cls, latents: torch.Tensor, media_index: torch.Tensor,
              kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> "MediaContext":
        """media_index [B, T] long: 1-based index of the latest `<image>` at or before each token, 0 if none."""
        _, num_media, num_latents = latents.shape[:3]
        # Media index of every key: image 1's n latents, then image 2's, ...
        key_media = torch.arange(1, num_media + 1, device=latents.device).repeat_interleave(num_latents)
        has_media = media_index > 0
        if num_media == 1:
            # One image: every row of the mask is all True (its image, or no image yet), so SDPA takes no mask
            # and can use its fused kernel; the result is the same (tests/test_flamingo.py checks it).
            return cls(latents=latents, attn_mask=None, has_media=has_media[:, :, None], kv=kv)
        attn_mask = (media_index[:, :, None] == key_media) | ~has_media[:, :, None]
        return cls(latents=latents, attn_mask=attn_mask[:, None], has_media=has_media[:, :, None], kv=kv)

    def explicit_mask(self, media_index: torch.Tensor) -> "MediaContext":
        """This context with the mask written out even for one image (the slow reference of `build`)."""
        num_media, num_latents = self.latents.shape[1:3]
        key_media = torch.arange(1, num_media + 1, device=self.latents.device).repeat_interleave(num_latents)
        mask = (media_index[:, :, None] == key_media) | ~self.has_media
        return MediaContext(self.latents, mask[:, None], self.has_media, self.kv)


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
        out = attention(q, k, v, media.attn_mask)
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
        # The block computes in its own (fp32) dtype and hands back the LM's dtype; tanh(0) * finite = 0 and the
        # round trip to fp32 is exact, so at initialisation x comes back unchanged.
        h = x.to(self.attn_gate.dtype)
        h = h + self.attn_gate.tanh() * self.attn(h, media, kv)
        h = h + self.ff_gate.tanh() * self.ff(h)
        return h.to(x.dtype)


class FlamingoDecoderLayer(nn.Module):
    """Wraps one frozen decoder layer of the LM: [optional gated xattn block] -> original layer.

    Every decoder layer is wrapped (so the LM stays uniform); only every N-th one owns a cross-attention block.
    The call signature is the original layer's; the media context comes from `attach_media`. Without one (the LM
    used on its own) the wrapper is a plain pass-through.

    Activation checkpointing is done here rather than by Hugging Face's `GradientCheckpointingLayer`, because
    that one only checkpoints modules in training mode and the frozen LM is always kept in eval mode (no dropout).
    We checkpoint whenever gradients are being recorded, wrapping xattn + layer in one non-reentrant checkpoint
    whose arguments (the `MediaContext` included) are replayed on recompute.
    """

    def __init__(self, decoder_layer: nn.Module, layer_idx: int, gated_xattn: GatedCrossAttentionBlock | None):
        super().__init__()
        self.decoder_layer = decoder_layer
        self.gated_xattn = gated_xattn
        self.layer_idx = layer_idx  # key of this layer's entry in `MediaContext.kv`
        self.activation_checkpointing = False
        self.media: MediaContext | None = None  # set by `attach_media` for one call only

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        media = self.media
        if self.activation_checkpointing and torch.is_grad_enabled():
            if kwargs.get("use_cache"):
                # The recompute would append this step's keys/values to the cache a second time.
                raise ValueError("activation checkpointing cannot be combined with a KV cache")
            return checkpoint(self._forward, hidden_states, media, *args, use_reentrant=False, **kwargs)
        return self._forward(hidden_states, media, *args, **kwargs)

    def _forward(self, hidden_states: torch.Tensor, media: MediaContext | None, *args, **kwargs):
        if self.gated_xattn is not None and media is not None:
            kv = media.kv.get(self.layer_idx) if media.kv is not None else None
            hidden_states = self.gated_xattn(hidden_states, media, kv)
            media.ran.add(self.layer_idx)
        return self.decoder_layer(hidden_states, *args, **kwargs)


@contextmanager
def attach_media(layers: list[FlamingoDecoderLayer], media: MediaContext | None):
    """Give every wrapped layer `media` for the duration of one LM call (see the module docstring)."""
    for layer in layers:
        layer.media = media
    try:
        yield
    finally:
        for layer in layers:
            layer.media = None

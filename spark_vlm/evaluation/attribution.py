"""Where a captioner's words looked: cross-attention attribution of SparkFlamingo, from text tokens to the vision
tower's patches (or, for the oracle tower, its object tokens).

The model's attention layers call `models.attention.attention` (SDPA or its written-out form), which returns no
weights. Here forward hooks read each layer's inputs during one ordinary forward pass and recompute the weights
from the module's own projections, softmax(q k^T / sqrt(d_head)) under the module's mask; the model's numbers are
untouched and nothing is stored on the model (the hooks write into a list local to the call and are removed in a
`finally`).

    text token t -> latents:   the gated xattn weights, averaged over heads and over the xattn layers   [T, n]
    latents -> patches:        the perceiver's last attention layer, over its media keys, head-averaged [n, P]
    text token t -> patches:   their product (attention rollout through the resampler)                  [T, P]

With `resampler=linear` every patch is its own visual token, so latents -> patches is the identity.

The perceiver's latents also attend to themselves; those keys are left out, so a row of the latent->patch
matrix sums to the share of attention that went to the image (< 1), and the rollout keeps that scale. The
gate values are not folded in: a closed gate makes a layer's weights meaningless for the output, which the
weights alone cannot show.
"""
from __future__ import annotations

import torch

from ..models.attention import attention_weights
from ..models.gated_xattn import MaskedCrossAttention
from ..models.perceiver import PerceiverAttention, PerceiverResampler, split_heads


def xattn_weights(module: MaskedCrossAttention, x: torch.Tensor, media, kv=None) -> torch.Tensor:
    """Recomputed attention weights [B, heads, T, M*n] of one masked cross-attention call `module(x, media, kv)`.
    Rows of tokens before any image (whose update the module zeroes) are zero here too."""
    q = split_heads(module.to_q(module.norm(x)), module.heads)
    k, _ = kv if kv is not None else module.project_kv(media.latents)
    weights = attention_weights(q.float(), k.float(), media.attn_mask)  # mask None: every token reads every latent
    return weights * media.has_media[:, None].to(weights.dtype)


def perceiver_weights(module: PerceiverAttention, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """Recomputed attention weights [B, M, heads, n, P + n] of one perceiver attention call `module(media,
    latents)`: the keys are the P media features, then the n latents."""
    media, latents = module.norm_media(media), module.norm_latents(latents)
    q = split_heads(module.to_q(latents), module.heads)
    k, _ = module.to_kv(torch.cat([media, latents], dim=-2)).chunk(2, dim=-1)
    k = split_heads(k, module.heads)
    return attention_weights(q.float(), k.float())


def _recording(module: torch.nn.Module, recompute, into: list):
    """A forward hook that appends `recompute(module, *inputs)` to `into` (no state on the model)."""
    return module.register_forward_hook(lambda mod, args, _out: into.append(recompute(mod, *args)))


@torch.no_grad()
def word_patch_attribution(model, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One forward pass of `model` (a SparkFlamingo) on one image per row ([B, 3, H, W] or [B, 1, ...]) with the
    given tokens; returns float32 tensors on the CPU:
        text_latents  [B, T, n]  xattn weights of each token over the latents (mean over heads and xattn layers)
        latent_patches [B, n, P] the perceiver's last layer's weights of each latent over the P patches
        text_patches  [B, T, P]  their product; row t is what token t read (it predicts token t + 1)
        logits        the forward's logits (unchanged by the hooks)."""
    pixel_values = model.with_media_axis(pixel_values)
    if pixel_values.shape[1] != 1:
        raise ValueError(f"attribution takes one image per sequence, got {pixel_values.shape[1]}")
    xattn, perceiver = [], []
    resampling = isinstance(model.perceiver, PerceiverResampler)
    hooks = [_recording(layer.gated_xattn.attn, xattn_weights, xattn)
             for layer in model.flamingo_layers() if layer.gated_xattn is not None]
    if resampling:
        hooks.append(_recording(model.perceiver.layers[-1][0], perceiver_weights, perceiver))
    try:
        logits = model(pixel_values, input_ids, attention_mask).logits
    finally:
        for hook in hooks:
            hook.remove()
    text_latents = torch.stack(xattn).mean(dim=(0, 2)).cpu()  # [B, T, n] (M = 1)
    if resampling:
        num_patches = perceiver[0].shape[-1] - model.perceiver.num_latents
        latent_patches = perceiver[0][:, 0].mean(1)[..., :num_patches].cpu()  # [B, n, P]
    else:  # resampler=linear: visual token i is patch i
        n = text_latents.shape[-1]
        latent_patches = torch.eye(n).expand(len(text_latents), n, n)
    return {"text_latents": text_latents, "latent_patches": latent_patches,
            "text_patches": text_latents @ latent_patches, "logits": logits}

"""The one attention function of our own modules (ViT, text tower, perceiver, gated cross-attention).

`F.scaled_dot_product_attention` picks a fused kernel. On CPU in bf16/fp16 and at our sequence lengths the fused
(flash) kernel is the slow choice: for 32-128 keys its forward + backward take 2-5x as long as the same attention
written as three plain ops; from ~250 keys up the fused kernel wins (`python benchmarks/attention_kernels.py`).
So reduced precision on CPU with at most `EXPLICIT_MAX_KEYS` keys is written out, the standard non-fused recipe
(Hugging Face's eager attention): scores q k^T / sqrt(d) in the input dtype (fp32 accumulation inside the matmul),
softmax, times v. The softmax is called in the input dtype: torch's CPU kernel computes a bf16/fp16 softmax in fp32
and rounds once, so the weights equal an fp32 softmax cast back bit for bit, while its backward skips the fp32 copy
(the softmax's forward + backward 2.2x faster at the perceiver's [16, 8, 64, 128]). Everything else (fp32
anywhere, where the gap is at most 1.5x; CUDA; long sequences) calls SDPA exactly as a direct call would, so those
numbers do not change.

Masks are boolean, True = may attend, broadcastable to [..., L_q, L_k], as SDPA's. A query row that may attend to
nothing gets an all-zero output on both paths (SDPA's convention on CPU).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EXPLICIT_MAX_KEYS = 128  # measured crossover: the fused kernel is faster from ~200-250 keys up (bf16, CPU)


def attention_weights(q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weights softmax(q k^T / sqrt(d), masked) [..., L_q, L_k] in `dtype`; q [..., L_q, d], k [..., L_k, d]. A row
    with no allowed key is all zeros (not NaN). Also what evaluation/attribution.py reads the layers' weights with."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = scores.softmax(-1, dtype=dtype)
    if attn_mask is not None:
        weights = weights.masked_fill(~attn_mask.any(-1, keepdim=True), 0.0)
    return weights


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """attention_weights(q, k, mask) v, the weights in v's dtype; k, v [..., L_k, d]."""
    return attention_weights(q, k, attn_mask, dtype=v.dtype) @ v


def uses_explicit(q: torch.Tensor, k: torch.Tensor) -> bool:
    """True where `attention` writes the attention out instead of calling SDPA (see the module docstring)."""
    reduced = (torch.bfloat16, torch.float16)
    low_precision = q.dtype in reduced or (torch.is_autocast_enabled("cpu") and
                                           torch.get_autocast_dtype("cpu") in reduced)
    return q.device.type == "cpu" and low_precision and k.shape[-2] <= EXPLICIT_MAX_KEYS


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention, [..., heads, L_q, d] -> [..., heads, L_q, d_v]."""
    if uses_explicit(q, k):
        return explicit_attention(q, k, v, attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)

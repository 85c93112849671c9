"""The attention function of our modules (spark_vlm/models/attention.py) and the perceiver that calls it on
several images per sample, against slow per-head loops written independently of both."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spark_vlm.models.attention import EXPLICIT_MAX_KEYS, attention, explicit_attention, uses_explicit
from spark_vlm.models.perceiver import PerceiverResampler


def loop_attention(q, k, v, mask=None):
    """One (batch, head, query) at a time in float64: softmax over the allowed keys, zeros if there are none."""
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=torch.float64)
    full_mask = None if mask is None else mask.expand(*q.shape[:-1], k.shape[2])
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                allowed = [j for j in range(k.shape[2]) if mask is None or bool(full_mask[b, h, i, j])]
                if not allowed:
                    continue
                s = torch.stack([q[b, h, i].double() @ k[b, h, j].double() for j in allowed]) / math.sqrt(q.shape[-1])
                w = torch.exp(s - s.max())
                w = w / w.sum()
                out[b, h, i] = sum(w[n] * v[b, h, j].double() for n, j in enumerate(allowed))
    return out


def qkv(shape_q=(2, 3, 5, 8), keys=7, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape_q, generator=g)
    k = torch.randn(*shape_q[:2], keys, shape_q[-1], generator=g)
    v = torch.randn(*shape_q[:2], keys, shape_q[-1], generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_explicit_attention_matches_a_per_query_loop_with_and_without_a_mask():
    q, k, v = qkv()
    mask = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(1)) > 0.4
    mask[0, 0, 2] = False  # a query that may attend to nothing: zeros
    for m in (None, mask):
        got = explicit_attention(q, k, v, m)
        torch.testing.assert_close(got.double(), loop_attention(q, k, v, m), rtol=1e-5, atol=1e-6)
    assert explicit_attention(q, k, v, mask)[0, :, 2].abs().max() == 0
    # SDPA follows the same conventions (the fused path of `attention`).
    torch.testing.assert_close(explicit_attention(q, k, v, mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=1e-5, atol=1e-6)


def test_explicit_attention_gradients_match_sdpa():
    q, k, v = qkv(keys=6)
    mask = torch.ones(2, 1, 5, 6, dtype=torch.bool)
    mask[1, :, :, :2] = False
    grads = []
    for fn in (explicit_attention, lambda *a: F.scaled_dot_product_attention(*a[:3], attn_mask=a[3])):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        (fn(*leaves, mask) * torch.linspace(-1, 1, 8)).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fp32_and_long_sequences_keep_sdpa_bit_for_bit():
    q, k, v = qkv(keys=9)
    assert not uses_explicit(q, k)
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    qb, kb, vb = qkv(keys=EXPLICIT_MAX_KEYS + 1, dtype=torch.bfloat16)
    assert not uses_explicit(qb, kb)
    assert torch.equal(attention(qb, kb, vb), F.scaled_dot_product_attention(qb, kb, vb))


def test_reduced_precision_on_cpu_is_written_out_and_as_accurate_as_sdpa():
    q, k, v = qkv(shape_q=(4, 4, 16, 32), keys=64, seed=3)
    exact = loop_attention(q, k, v)
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    assert uses_explicit(qb, kb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert uses_explicit(q, k)  # fp32 inputs under bf16 autocast: SDPA would run in bf16 too
    ours = attention(qb, kb, vb)
    assert ours.dtype == torch.bfloat16
    err_ours = (ours.double() - exact).abs().max().item()
    err_sdpa = (F.scaled_dot_product_attention(qb, kb, vb).double() - exact).abs().max().item()
    assert err_ours < 0.05 and err_ours <= 1.5 * err_sdpa + 1e-3, (err_ours, err_sdpa)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_softmax_equals_an_fp32_softmax_cast_back(dtype):
    """The written-out path calls the softmax in the input dtype (its backward is faster); torch's CPU kernel
    computes it in fp32 and rounds once, so the weights must be exactly those of an fp32 softmax cast back."""
    from spark_vlm.models.attention import attention_weights

    q, k, v = qkv(shape_q=(4, 8, 64, 64), keys=128, dtype=dtype, seed=5)
    mask = torch.rand(4, 1, 64, 128, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[0, :, 3] = False  # a row with no allowed key: zeros on both
    for m in (None, mask):
        fast = attention_weights(q, k, m, dtype=dtype)
        assert fast.dtype == dtype
        assert torch.equal(fast, attention_weights(q, k, m).to(dtype))
        assert torch.equal(explicit_attention(q, k, v, m), attention_weights(q, k, m).to(dtype) @ v)


def slow_perceiver(model: PerceiverResampler, features: torch.Tensor) -> torch.Tensor:
    """The resampler one image at a time, every attention through `loop_attention` (float64 weights)."""
    out = torch.empty(*features.shape[:2], model.num_latents, model.latents.shape[1], dtype=torch.float64)
    for b in range(features.shape[0]):
        for m in range(features.shape[1]):
            media = model.proj_in(features[b, m])
            x = model.latents
            for attn, ff in model.layers:
                med, lat = attn.norm_media(media), attn.norm_latents(x)
                k, v = attn.to_kv(torch.cat([med, lat])).chunk(2, dim=-1)
                split = lambda t: t.view(t.shape[0], attn.heads, -1).transpose(0, 1)[None]  # noqa: E731
                o = loop_attention(split(attn.to_q(lat)), split(k), split(v))[0]  # [heads, n, dim_head]
                x = x + attn.to_out(o.transpose(0, 1).reshape(x.shape[0], -1).float())
                x = x + ff(x)
            out[b, m] = model.norm(x).double()
    return out


def test_perceiver_on_several_images_per_sample_matches_one_image_at_a_time():
    torch.manual_seed(0)
    model = PerceiverResampler(vision_width=12, dim=16, depth=2, heads=2, dim_head=8, num_latents=3).eval()
    features = torch.randn(2, 3, 5, 12)  # 2 samples x 3 images x 5 patches
    with torch.no_grad():
        fast = model(features)
        torch.testing.assert_close(fast.double(), slow_perceiver(model, features), rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(features)
    assert (low.float() - fast).abs().max() < 0.1  # bf16 autocast: the written-out path, close to fp32


def test_attention_kernels_benchmark_reports_both_kernels_and_the_dispatch(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "kernels.json"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "benchmarks/attention_kernels.py"), "--lengths", "8", "256",
                    "--repeats", "1", "--out", str(out)], check=True, capture_output=True, cwd=tmp_path)
    rows = {(r["dtype"], r["keys"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("float32", 8), ("float32", 256), ("bfloat16", 8), ("bfloat16", 256)}
    assert [rows[k]["attention() uses"] for k in sorted(rows)] == ["explicit", "sdpa", "sdpa", "sdpa"]
    assert all(r[f"{kernel} {part} ms"] > 0 for r in rows.values() for kernel in ("sdpa", "explicit")
               for part in ("fwd", "fwd+bwd"))

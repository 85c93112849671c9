"""Cross-attention attribution (evaluation/attribution.py) against slow per-head, per-query loops on a tiny
SparkFlamingo: the recomputed weights reproduce each layer's own output, sum to 1 over the latents a token may
read, and the hooked forward leaves the logits unchanged."""
from __future__ import annotations

import math

import pytest
import torch

from spark_vlm.evaluation.attribution import word_patch_attribution, xattn_weights
from test_flamingo import images, left_pad, make_model, set_gates, single_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def model():
    model = make_model(num_latents=3).eval()
    set_gates(model, 0.7)
    return model


def slow_weights(q_rows, k_rows, allowed):
    """Per query row: softmax of its dot products with each allowed key row / sqrt(d), in plain Python."""
    out = torch.zeros(len(q_rows), len(k_rows))
    for i, q in enumerate(q_rows):
        scores = [float(q @ k) / math.sqrt(len(q)) if allowed[i][j] else -math.inf for j, k in enumerate(k_rows)]
        top = max(scores)
        exps = [math.exp(s - top) if s != -math.inf else 0.0 for s in scores]
        out[i] = torch.tensor(exps) / sum(exps)
    return out


@torch.no_grad()
def test_xattn_weights_reproduce_the_layer_output_and_a_per_head_loop(model):
    ids, mask = left_pad([[5, model.image_token_id, 6, 7, 8]])  # a token before the image: a zero row
    captured = []
    attn = model.flamingo_layers()[0].gated_xattn.attn
    hook = attn.register_forward_hook(lambda mod, args, out: captured.append((args, out)))
    try:
        model(images(1, 1), ids, mask)
    finally:
        hook.remove()
    (x, media, kv), out = captured[0]
    weights = xattn_weights(attn, x, media, kv)  # [1, heads, T, n]
    q = attn.to_q(attn.norm(x))[0]
    k, v = attn.project_kv(media.latents)
    # one image per row: no mask is built (every token may read every latent; has_media zeroes the rest)
    allowed = torch.ones(q.shape[0], k.shape[2], dtype=torch.bool) if media.attn_mask is None else media.attn_mask[0, 0]
    dim_head = q.shape[-1] // attn.heads
    for h in range(attn.heads):
        expected = slow_weights(q[:, h * dim_head:(h + 1) * dim_head], k[0, h], allowed)
        expected[0] = 0.0  # the token before <image> reads nothing
        torch.testing.assert_close(weights[0, h], expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(weights[0, :, 1:].sum(-1), torch.ones(attn.heads, 4), atol=1e-6)
    # weights @ values through the output projection is the layer's own output
    mixed = (weights @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(attn.to_out(mixed), out, atol=1e-5, rtol=1e-5)


def test_word_patch_attribution_is_a_rollout_and_changes_nothing(model):
    ids, mask = left_pad([[model.image_token_id, 6, 7], [model.image_token_id, 9, 10]])
    px = images(2, 1)
    plain = model(px, ids, mask).logits
    result = word_patch_attribution(model, px, ids, mask)
    torch.testing.assert_close(result["logits"], plain, atol=0, rtol=0)
    n, patches = model.perceiver.num_latents, model.vision.config.num_patches
    assert result["text_latents"].shape == (2, 3, n) and result["latent_patches"].shape == (2, n, patches)
    torch.testing.assert_close(result["text_latents"].sum(-1), torch.ones(2, 3))  # a mean of distributions
    # each latent's patch share is below 1 (the rest went to the latents themselves)
    share = result["latent_patches"].sum(-1)
    assert bool(((share > 0) & (share < 1)).all())
    for b in range(2):  # the rollout as a per-token, per-patch double loop
        for t in range(3):
            for p in range(patches):
                value = sum(result["text_latents"][b, t, j] * result["latent_patches"][b, j, p] for j in range(n))
                assert abs(float(result["text_patches"][b, t, p]) - float(value)) < 1e-6
    # the two images differ, so the rows read different patches
    assert not torch.allclose(result["latent_patches"][0], result["latent_patches"][1])


def test_linear_resampler_attribution_reads_patches_directly():
    """resampler=linear: visual token i is patch i, so text -> patches is the xattn weights themselves."""
    model = make_model(resampler="linear").eval()
    set_gates(model, 0.7)
    ids, mask = left_pad([[model.image_token_id, 6, 7]])
    px = images(1, 1)
    result = word_patch_attribution(model, px, ids, mask)
    patches = model.vision.config.num_patches
    assert result["text_patches"].shape == (1, 3, patches)
    torch.testing.assert_close(result["text_patches"], result["text_latents"])
    torch.testing.assert_close(result["text_patches"].sum(-1), torch.ones(1, 3))
    torch.testing.assert_close(result["logits"], model(px, ids, mask).logits, atol=0, rtol=0)

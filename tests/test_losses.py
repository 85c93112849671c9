"""Tests for spark_vlm.losses against slow, loop-based references written from the spec
(docs/sparc_method.md: CLIP global loss Eq. 1, SPARC fine-grained loss Eqs. 2-6, FILIP baseline).

The references below loop over examples / tokens / patches with scalar and 1-D torch ops in float64, so
that autograd through them gives reference gradients too. They are deliberately independent of the
vectorised module code.

Note: `sparc_alignment` / `sparc_fine_grained_loss` document fp32 outputs (the module computes the alignment
in fp32 even for float64 inputs), so SPARC comparisons use fp32-level tolerances; CLIP/FILIP are compared at
float64-level tolerances when the module keeps float64.
"""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from spark_vlm.losses import (
    clip_loss,
    filip_loss,
    gather_with_grad,
    sparc_alignment,
    sparc_fine_grained_loss,
    sparc_loss,
)

F64 = torch.float64


# ============================================================================================ references
def _norm1d(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise a 1-D vector (same eps convention as F.normalize: divide by max(||x||, 1e-12))."""
    n = torch.sqrt((x * x).sum())
    return x / torch.clamp(n, min=1e-12)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (_norm1d(a) * _norm1d(b)).sum()


def _neg_log_softmax_at(row: list[torch.Tensor], idx: int) -> torch.Tensor:
    """-log softmax(row)[idx] for a list of 0-dim tensors (stable log-sum-exp by hand)."""
    m = row[0]
    for r in row[1:]:
        m = torch.maximum(m, r)
    m = m.detach()
    s = sum(torch.exp(r - m) for r in row)
    return -(row[idx] - m - torch.log(s))


def ref_clip(img: torch.Tensor, txt: torch.Tensor, scale) -> torch.Tensor:
    B = img.shape[0]
    logits = [[scale * _cos(img[i], txt[j]) for j in range(B)] for i in range(B)]
    i2t = sum(_neg_log_softmax_at(logits[i], i) for i in range(B)) / B
    t2i = sum(_neg_log_softmax_at([logits[i][j] for i in range(B)], j) for j in range(B)) / B
    return (i2t + t2i) / 2


def ref_filip(patches, tokens, mask, scale) -> torch.Tensor:
    B, P, _ = patches.shape
    L = tokens.shape[1]
    real = [[l for l in range(L) if bool(mask[j, l])] for j in range(B)]
    # cos[i][j][p][l] for real l only
    i2t = [[None] * B for _ in range(B)]  # image i -> text j
    t2i = [[None] * B for _ in range(B)]  # text j -> image i  (indexed [j][i])
    for i in range(B):
        for j in range(B):
            c = [[_cos(patches[i, p], tokens[j, l]) for l in real[j]] for p in range(P)]
            per_patch = []
            for p in range(P):
                m = c[p][0]
                for v in c[p][1:]:
                    m = torch.maximum(m, v)
                per_patch.append(m)
            i2t[i][j] = scale * sum(per_patch) / P
            per_token = []
            for k in range(len(real[j])):
                m = c[0][k]
                for p in range(1, P):
                    m = torch.maximum(m, c[p][k])
                per_token.append(m)
            t2i[j][i] = scale * sum(per_token) / len(real[j])
    li = sum(_neg_log_softmax_at(i2t[i], i) for i in range(B)) / B
    lt = sum(_neg_log_softmax_at(t2i[j], j) for j in range(B)) / B
    return (li + lt) / 2


def ref_alignment(patches, tokens, mask=None, threshold=None, eps=1e-6, weights="l1"):
    """Eqs. 2-5 per (example, token): min-max over patches, keep >= threshold (default 1/P), L1-normalise,
    grouped = weighted sum of the raw patch embeddings. A flat row gets uniform weights (documented design
    decision). weights="softmax": exp(s_p) / sum of exp(s_r) over the kept patches r, 0 elsewhere. weights="max":
    weight 1 on the argmax patch (a constant: no gradient through the choice).
    Returns python nested lists of 1-D tensors: weights[b][l] ([P]) and grouped[b][l] ([D])."""
    B, P, D = patches.shape
    L = tokens.shape[1]
    thr = 1.0 / P if threshold is None else threshold
    W, G = [], []
    for b in range(B):
        wb, gb = [], []
        for l in range(L):
            if mask is not None and not bool(mask[b, l]):
                wb.append(torch.zeros(P, dtype=patches.dtype))
                gb.append(torch.zeros(D, dtype=patches.dtype))
                continue
            s = torch.stack([(tokens[b, l] * patches[b, p]).sum() for p in range(P)])
            mn, mx = s.min(), s.max()
            d = mx - mn
            if float(d.detach()) <= eps:
                w = torch.full((P,), 1.0 / P, dtype=patches.dtype) + 0 * s
            else:
                sh = (s - mn) / d
                keep = (sh.detach() >= thr).to(s.dtype)
                sp = sh * keep
                if weights == "l1":
                    w = sp / sp.sum()
                elif weights == "max":
                    w = torch.zeros(P, dtype=patches.dtype)
                    w[int(s.detach().argmax())] = 1.0
                else:
                    e = [torch.exp(s[p] - mx) if keep[p] else 0 * s[p] for p in range(P)]
                    w = torch.stack([x / sum(e) for x in e])
            g = sum(w[p] * patches[b, p] for p in range(P))
            wb.append(w)
            gb.append(g)
        W.append(wb)
        G.append(gb)
    return W, G


def ref_fine(patches, tokens, mask, scale) -> torch.Tensor:
    """Eq. 6: per caption, contrast t_l vs c_k over its real tokens (both directions), average over its real
    tokens, divide by 2, then mean over captions that have at least one real token."""
    B, _, _ = patches.shape
    L = tokens.shape[1]
    _, G = ref_alignment(patches, tokens, mask)
    losses = []
    for b in range(B):
        real = [l for l in range(L) if bool(mask[b, l])]
        if not real:
            continue
        t = [_norm1d(tokens[b, l]) for l in real]
        c = [_norm1d(G[b][l]) for l in real]
        n = len(real)
        t2c = sum(_neg_log_softmax_at([scale * (t[j] * c[k]).sum() for k in range(n)], j) for j in range(n))
        c2t = sum(_neg_log_softmax_at([scale * (c[j] * t[k]).sum() for k in range(n)], j) for j in range(n))
        losses.append((t2c + c2t) / (2 * n))
    return sum(losses) / len(losses)


# ============================================================================================ fixtures
LENGTHS = [5, 3, 1, 4]  # varying real lengths, one caption with a single real token


def make_batch(B=4, P=6, L=5, D=8, lengths=None, dtype=F64, seed=0, scale_embeds=1.0):
    g = torch.Generator().manual_seed(seed)
    lengths = lengths if lengths is not None else LENGTHS[:B]
    img = torch.randn(B, D, generator=g, dtype=dtype)
    txt = torch.randn(B, D, generator=g, dtype=dtype)
    patches = torch.randn(B, P, D, generator=g, dtype=dtype) * scale_embeds
    tokens = torch.randn(B, L, D, generator=g, dtype=dtype) * scale_embeds
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    # make pads look like garbage (large values) so that any leak shows up
    tokens = torch.where(mask[..., None], tokens, 7.0 * torch.randn(B, L, D, generator=g, dtype=dtype))
    return img, txt, patches, tokens, mask


def leaves(*xs):
    return [x.detach().clone().requires_grad_(True) for x in xs]


def grads_of(loss, xs):
    gs = torch.autograd.grad(loss, xs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, gs)]


# ============================================================================================ 1. references
@pytest.mark.parametrize("scale_kind", ["float", "tensor"])
def test_clip_matches_reference_value_and_grads(scale_kind):
    img, txt, *_ = make_batch(B=6, lengths=[5] * 6)
    scale_val = 7.5
    a, b = leaves(img, txt)
    s_mod = torch.tensor(scale_val, dtype=F64, requires_grad=True) if scale_kind == "tensor" else scale_val
    out = clip_loss(a, b, s_mod)
    assert out.dim() == 0
    xs_mod = [a, b] + ([s_mod] if scale_kind == "tensor" else [])
    g_mod = grads_of(out, xs_mod)

    ra, rb = leaves(img, txt)
    s_ref = torch.tensor(scale_val, dtype=F64, requires_grad=True)
    ref = ref_clip(ra, rb, s_ref)
    g_ref = grads_of(ref, [ra, rb, s_ref])

    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    for gm, gr in zip(g_mod, g_ref):
        torch.testing.assert_close(gm.double(), gr, rtol=1e-5, atol=1e-6)


def test_clip_is_scale_invariant_in_inputs_and_perfect_alignment_is_low():
    img, txt, *_ = make_batch(B=5, lengths=[5] * 5)
    base = clip_loss(img, txt, 10.0)
    torch.testing.assert_close(clip_loss(img * 3.0, txt * 0.2, 10.0), base)  # normalised inside
    assert clip_loss(img, img, 100.0) < 1e-3  # identical pairs, large scale -> ~0


def test_filip_matches_reference_value_and_grads():
    _, _, patches, tokens, mask = make_batch()
    scale_val = 9.0
    p, t = leaves(patches, tokens)
    s = torch.tensor(scale_val, dtype=F64, requires_grad=True)
    out = filip_loss(p, t, mask, s)
    assert out.dim() == 0
    g_mod = grads_of(out, [p, t, s])

    rp, rt = leaves(patches, tokens)
    rs = torch.tensor(scale_val, dtype=F64, requires_grad=True)
    ref = ref_filip(rp, rt, mask, rs)
    g_ref = grads_of(ref, [rp, rt, rs])

    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    for gm, gr in zip(g_mod, g_ref):
        torch.testing.assert_close(gm.double(), gr, rtol=1e-5, atol=1e-6)
    # padded tokens get no gradient
    assert torch.all(g_mod[1][~mask] == 0)


@pytest.mark.parametrize("P", [6, 49])
def test_sparc_alignment_matches_reference_value_and_grads(P):
    _, _, patches, tokens, mask = make_batch(P=P)
    p, t = leaves(patches, tokens)
    grouped, weights = sparc_alignment(p, t, mask)
    B, L, D = tokens.shape
    assert grouped.shape == (B, L, D) and weights.shape == (B, L, P)
    assert grouped.dtype == torch.float32 and weights.dtype == torch.float32

    rp, rt = leaves(patches, tokens)
    W, G = ref_alignment(rp, rt, mask)
    W = torch.stack([torch.stack(w) for w in W])
    G = torch.stack([torch.stack(g) for g in G])
    torch.testing.assert_close(weights.double(), W, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grouped.double(), G, rtol=1e-5, atol=1e-5)

    # gradients of an arbitrary scalar function of both outputs
    g = torch.Generator().manual_seed(1)
    cw = torch.randn(B, L, P, generator=g, dtype=F64)
    cg = torch.randn(B, L, D, generator=g, dtype=F64)
    gm = grads_of((weights.double() * cw).sum() + (grouped.double() * cg).sum(), [p, t])
    gr = grads_of((W * cw).sum() + (G * cg).sum(), [rp, rt])
    for a, b in zip(gm, gr):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_sparc_alignment_mask_none_means_all_real():
    _, _, patches, tokens, _ = make_batch()
    g1, w1 = sparc_alignment(patches, tokens)
    g2, w2 = sparc_alignment(patches, tokens, torch.ones(tokens.shape[:2], dtype=torch.bool))
    torch.testing.assert_close(w1, w2)
    torch.testing.assert_close(g1, g2)
    W, _ = ref_alignment(patches, tokens, None)
    torch.testing.assert_close(w1.double(), torch.stack([torch.stack(w) for w in W]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale_val", [1.0, 10.0, 50.0])
def test_sparc_fine_loss_matches_reference_value_and_grads(scale_val):
    _, _, patches, tokens, mask = make_batch()
    p, t = leaves(patches, tokens)
    s = torch.tensor(scale_val, dtype=F64, requires_grad=True)
    out = sparc_fine_grained_loss(p, t, mask, s)
    assert out.dim() == 0
    g_mod = grads_of(out, [p, t, s])

    rp, rt = leaves(patches, tokens)
    rs = torch.tensor(scale_val, dtype=F64, requires_grad=True)
    ref = ref_fine(rp, rt, mask, rs)
    g_ref = grads_of(ref, [rp, rt, rs])

    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    names = ["patches", "tokens", "logit_scale"]
    for n, gm, gr in zip(names, g_mod, g_ref):
        torch.testing.assert_close(gm.double(), gr, rtol=1e-4, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")
    assert torch.all(g_mod[1][~mask] == 0), "padded tokens must get no gradient"


def test_sparc_fine_loss_float_scale_equals_tensor_scale():
    _, _, patches, tokens, mask = make_batch()
    a = sparc_fine_grained_loss(patches, tokens, mask, 12.0)
    b = sparc_fine_grained_loss(patches, tokens, mask, torch.tensor(12.0))
    torch.testing.assert_close(a, b)


def test_sparc_loss_combines_parts():
    img, txt, patches, tokens, mask = make_batch()
    out = sparc_loss(img, txt, patches, tokens, mask, 10.0)
    assert set(out) >= {"loss", "global_loss", "fine_loss"}
    torch.testing.assert_close(out["global_loss"].double(), clip_loss(img, txt, 10.0).double())
    torch.testing.assert_close(out["fine_loss"].double(), sparc_fine_grained_loss(patches, tokens, mask, 10.0).double())
    torch.testing.assert_close(out["loss"].double(), 0.5 * out["global_loss"].double() + out["fine_loss"].double())
    out2 = sparc_loss(img, txt, patches, tokens, mask, 10.0, lambda_global=0.25, lambda_fine=5.0)
    torch.testing.assert_close(out2["loss"].double(), 0.25 * out["global_loss"].double() + 5.0 * out["fine_loss"].double())
    # and against the references
    torch.testing.assert_close(out["global_loss"].double(), ref_clip(img, txt, 10.0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["fine_loss"].double(), ref_fine(patches, tokens, mask, 10.0), rtol=1e-5, atol=1e-6)


def test_gather_with_grad_is_identity_without_distributed():
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    x = torch.randn(3, 4, requires_grad=True)
    y = gather_with_grad(x)
    torch.testing.assert_close(y, x)
    (y * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


# ============================================================================================ 2. invariances
def test_fine_loss_ignores_padded_token_embeddings():
    _, _, patches, tokens, mask = make_batch()
    tokens2 = tokens.clone()
    tokens2[~mask] = torch.randn(int((~mask).sum()), tokens.shape[-1], dtype=F64) * 100.0
    tokens3 = tokens.clone()
    tokens3[~mask] = 0.0  # identical (zero) pads -> flat rows
    outs = []
    for tk in (tokens, tokens2, tokens3):
        p, t = leaves(patches, tk)
        loss = sparc_fine_grained_loss(p, t, mask, 10.0)
        gp, gt = grads_of(loss, [p, t])
        assert torch.isfinite(loss) and torch.isfinite(gp).all() and torch.isfinite(gt).all()
        outs.append((loss, gp, gt[mask], gt[~mask]))
    for loss, gp, gt_real, gt_pad in outs[1:]:
        torch.testing.assert_close(loss, outs[0][0])
        torch.testing.assert_close(gp, outs[0][1])
        torch.testing.assert_close(gt_real, outs[0][2])
        assert torch.all(gt_pad == 0)
    # the alignment of real tokens doesn't change either; pads get zero weights and zero grouped embeddings
    g0, w0 = sparc_alignment(patches, tokens, mask)
    g1, w1 = sparc_alignment(patches, tokens2, mask)
    torch.testing.assert_close(w0, w1)
    torch.testing.assert_close(g0, g1)
    assert torch.all(w1[~mask] == 0) and torch.all(g1[~mask] == 0)


def test_fine_loss_is_mean_of_per_caption_losses_and_independent_across_batch():
    _, _, patches, tokens, mask = make_batch()
    B = patches.shape[0]
    p, t = leaves(patches, tokens)
    loss = sparc_fine_grained_loss(p, t, mask, 10.0)
    gp, gt = grads_of(loss, [p, t])

    per = []
    for i in range(B):
        pi, ti = leaves(patches[i : i + 1], tokens[i : i + 1])
        li = sparc_fine_grained_loss(pi, ti, mask[i : i + 1], 10.0)
        gpi, gti = grads_of(li, [pi, ti])
        per.append(li)
        # example i's gradient inside the batch is exactly its own loss's gradient / B
        torch.testing.assert_close(gp[i : i + 1], gpi / B, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(gt[i : i + 1], gti / B, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss, torch.stack(per).mean(), rtol=1e-6, atol=1e-6)
    # single-real-token caption: softmax over one element -> zero loss
    assert abs(float(per[2].detach())) < 1e-6

    # changing another example does not change example 0's contribution
    p2, t2 = patches.clone(), tokens.clone()
    p2[1:] = torch.randn_like(p2[1:])
    t2[1:] = torch.randn_like(t2[1:])
    full2 = sparc_fine_grained_loss(p2, t2, mask, 10.0)
    per2 = [sparc_fine_grained_loss(p2[i : i + 1], t2[i : i + 1], mask[i : i + 1], 10.0) for i in range(B)]
    torch.testing.assert_close(per2[0], per[0])
    torch.testing.assert_close(full2, torch.stack(per2).mean(), rtol=1e-6, atol=1e-6)


def test_fine_loss_skips_captions_without_real_tokens():
    _, _, patches, tokens, _ = make_batch(lengths=[5, 0, 3, 2])
    mask = torch.zeros(4, 5, dtype=torch.bool)
    for b, n in enumerate([5, 0, 3, 2]):
        mask[b, :n] = True
    p, t = leaves(patches, tokens)
    loss = sparc_fine_grained_loss(p, t, mask, 10.0)
    gp, gt = grads_of(loss, [p, t])
    assert torch.isfinite(loss) and torch.isfinite(gp).all() and torch.isfinite(gt).all()
    keep = [0, 2, 3]
    expected = sparc_fine_grained_loss(patches[keep], tokens[keep], mask[keep], 10.0)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss.double(), ref_fine(patches, tokens, mask, 10.0), rtol=1e-5, atol=1e-6)
    assert torch.all(gp[1] == 0) and torch.all(gt[1] == 0)


@pytest.mark.parametrize("P", [6, 16, 49])
def test_alignment_weight_properties(P):
    _, _, patches, tokens, mask = make_batch(P=P, seed=3)
    _, w = sparc_alignment(patches, tokens, mask)
    w = w.double()
    real_w = w[mask]  # [N, P]
    assert torch.all(w >= 0)
    torch.testing.assert_close(real_w.sum(-1), torch.ones(real_w.shape[0], dtype=F64), rtol=0, atol=1e-6)
    assert torch.all(w[~mask] == 0)

    s = torch.einsum("bld,bpd->blp", tokens, patches)[mask]  # float64 similarities, raw inner product
    mn, mx = s.min(-1, keepdim=True).values, s.max(-1, keepdim=True).values
    sh = (s - mn) / (mx - mn)
    # the argmax patch is always kept and has the largest weight
    am = s.argmax(-1)
    assert torch.all(real_w.gather(1, am[:, None]) > 0)
    assert torch.all(real_w.argmax(-1) == am)
    # below the 1/P threshold -> exactly zero; clearly above -> positive
    margin = 1e-5
    below = sh < 1.0 / P - margin
    above = sh > 1.0 / P + margin
    assert below.any(), "test data should exercise the threshold"
    assert torch.all(real_w[below] == 0)
    assert torch.all(real_w[above] > 0)
    # weights are proportional to the min-max value among the kept patches (no softmax)
    kept = real_w > 0
    ratio = torch.where(kept, real_w / sh.clamp_min(1e-30), torch.zeros_like(real_w))
    rmax = ratio.max(-1, keepdim=True).values
    torch.testing.assert_close(torch.where(kept, ratio, rmax), rmax.expand_as(ratio), rtol=1e-4, atol=0)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.75, 0.999])
def test_alignment_custom_threshold(threshold):
    _, _, patches, tokens, mask = make_batch(P=12, seed=5)
    g, w = sparc_alignment(patches, tokens, mask, threshold=threshold)
    W, G = ref_alignment(patches, tokens, mask, threshold=threshold)
    W = torch.stack([torch.stack(x) for x in W])
    G = torch.stack([torch.stack(x) for x in G])
    torch.testing.assert_close(w.double(), W, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), G, rtol=1e-5, atol=1e-5)
    nkept = (w[mask] > 0).sum(-1)
    assert torch.all(nkept >= 1)
    if threshold == 0.999:
        assert torch.all(nkept == 1)  # only the argmax patch survives on this data
    # a higher threshold never keeps more patches than the default 1/P one (when threshold >= 1/P)
    if threshold >= 1 / 12:
        _, w_def = sparc_alignment(patches, tokens, mask)
        assert torch.all(nkept <= (w_def[mask] > 0).sum(-1))


def test_degenerate_rows_are_finite_and_uniform():
    _, _, patches, tokens, mask = make_batch(seed=7)
    patches = patches.clone()
    tokens = tokens.clone()
    tokens[0, 1] = 0.0  # zero token embedding -> all similarities 0 -> flat row
    patches[3] = patches[3, 0:1].expand_as(patches[3]).clone()  # all patches of example 3 identical
    g, w = sparc_alignment(patches, tokens, mask)
    assert torch.isfinite(w).all() and torch.isfinite(g).all()
    P = patches.shape[1]
    torch.testing.assert_close(w[0, 1].double(), torch.full((P,), 1.0 / P, dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(g[0, 1].double(), patches[0].mean(0), rtol=1e-5, atol=1e-6)
    n3 = int(mask[3].sum())
    torch.testing.assert_close(
        w[3, :n3].double(), torch.full((n3, P), 1.0 / P, dtype=F64), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(g[3, :n3].double(), patches[3, :1].expand(n3, -1), rtol=1e-5, atol=1e-6)

    p, t = leaves(patches, tokens)
    s = torch.tensor(10.0, dtype=F64, requires_grad=True)
    loss = sparc_fine_grained_loss(p, t, mask, s)
    gp, gt, gs = grads_of(loss, [p, t, s])
    assert torch.isfinite(loss)
    assert torch.isfinite(gp).all() and torch.isfinite(gt).all() and torch.isfinite(gs).all()
    # example 3: every grouped embedding is the same vector c, so in the token->grouped direction all
    # columns tie: that half of its loss is log(n3); the grouped->token half is finite.
    l3 = sparc_fine_grained_loss(patches[3:4], tokens[3:4], mask[3:4], 10.0)
    assert torch.isfinite(l3) and float(l3) >= 0.5 * math.log(n3) - 1e-5
    # the module agrees with the reference on the degenerate batch too
    torch.testing.assert_close(loss.double(), ref_fine(patches, tokens, mask, 10.0), rtol=1e-5, atol=1e-6)

    # everything zero: still finite
    p0, t0 = leaves(torch.zeros_like(patches), torch.zeros_like(tokens))
    loss0 = sparc_fine_grained_loss(p0, t0, mask, 10.0)
    g0 = grads_of(loss0, [p0, t0])
    assert torch.isfinite(loss0) and all(torch.isfinite(x).all() for x in g0)


def test_bf16_autocast_alignment_stays_fp32():
    _, _, patches, tokens, mask = make_batch(B=4, P=16, L=5, D=32, dtype=torch.float32, seed=11)
    g32, w32 = sparc_alignment(patches, tokens, mask)
    l32 = sparc_fine_grained_loss(patches, tokens, mask, 10.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g_ac, w_ac = sparc_alignment(patches, tokens, mask)
        l_ac = sparc_fine_grained_loss(patches, tokens, mask, 10.0)
    assert w_ac.dtype == torch.float32 and g_ac.dtype == torch.float32
    # fp32 inputs under autocast: the similarities / min-max / threshold must not be done in bf16
    torch.testing.assert_close(w_ac, w32, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_ac, g32, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(l_ac.float(), l32, rtol=2e-2, atol=2e-2)

    # bf16 inputs (as produced by a bf16 model) under autocast: alignment in fp32, equal to the fp32
    # computation on the same (bf16-rounded) values; loss close to the fp32 loss of those values
    pb, tb = leaves(patches.bfloat16(), tokens.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gb, wb = sparc_alignment(pb, tb, mask)
        lb = sparc_fine_grained_loss(pb, tb, mask, 10.0)
    assert wb.dtype == torch.float32 and gb.dtype == torch.float32
    g_r, w_r = sparc_alignment(pb.detach().float(), tb.detach().float(), mask)
    torch.testing.assert_close(wb, w_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gb, g_r, rtol=1e-4, atol=1e-4)
    l_r = sparc_fine_grained_loss(pb.detach().float(), tb.detach().float(), mask, 10.0)
    assert torch.isfinite(lb)
    torch.testing.assert_close(lb.float(), l_r, rtol=2e-2, atol=2e-2)
    lb.float().backward()
    assert pb.grad is not None and torch.isfinite(pb.grad.float()).all() and torch.isfinite(tb.grad.float()).all()


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["clip", "filip", "sparc"])
def test_every_loss_works_in_every_training_precision(name, precision):
    """What the trainer does in fp32, bf16 and fp16: low-precision embeddings under autocast. Each loss must give
    a finite value and finite gradients, close to the fp32 loss of the same (rounded) values. (FILIP once raised
    "value cannot be converted to type c10::BFloat16 without overflow" under bf16.)"""
    img, txt, patches, tokens, mask = make_batch(B=4, P=16, L=5, D=32, dtype=torch.float32, seed=3)
    rounded = [x.to(precision).float() for x in (img, txt, patches, tokens)]

    def loss_of(i, t, p, k):
        if name == "clip":
            return clip_loss(i, t, torch.tensor(10.0))
        if name == "filip":
            return filip_loss(p, k, mask, torch.tensor(10.0))
        return sparc_loss(i, t, p, k, mask, torch.tensor(10.0))["loss"]

    low = leaves(*(x.to(precision) for x in (img, txt, patches, tokens)))
    with torch.autocast("cpu", dtype=precision, enabled=precision != torch.float32):
        loss = loss_of(*low)
    loss.float().backward()
    assert torch.isfinite(loss)
    used = {"clip": low[:2], "filip": low[2:], "sparc": low}[name]
    assert all(x.grad is not None and torch.isfinite(x.grad.float()).all() for x in used)
    torch.testing.assert_close(loss.float(), loss_of(*rounded), rtol=2e-2, atol=2e-2)


# ============================================================================================ 3. memory shape
def test_sparc_memory_no_BxBxLxP_tensor():
    from torch.utils._python_dispatch import TorchDispatchMode

    B, L, P, D = 256, 16, 64, 32
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(B, P, D, generator=g, requires_grad=True)
    tokens = torch.randn(B, L, D, generator=g, requires_grad=True)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None, :] < lengths[:, None]

    class MaxNumel(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.max_numel = 0
            self.max_shape = None

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor) and o.numel() > self.max_numel:
                    self.max_numel, self.max_shape = o.numel(), tuple(o.shape)
            return out

    mode = MaxNumel()
    with mode:
        loss = sparc_fine_grained_loss(patches, tokens, mask, 10.0)
        loss.backward()
    assert torch.isfinite(loss)
    bound = 4 * B * L * (P + L + D)  # O(B * L * (P + L + D)); B*B*L*P would be 37x larger, B*L*P*D 4.6x
    assert mode.max_numel <= bound, f"largest intermediate {mode.max_shape} ({mode.max_numel} elements)"


# ============================================================================================ 4. distributed
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_data(b: int):
    img, txt, patches, tokens, mask = make_batch(
        B=2 * b, P=5, L=4, D=6, lengths=[4, 2, 1, 3, 4, 2][: 2 * b], dtype=F64, seed=21
    )
    return img, txt, patches, tokens, mask


def _dist_worker(rank: int, world: int, port: int, outdir: str, b: int):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        img, txt, patches, tokens, mask = _dist_data(b)
        sl = slice(rank * b, (rank + 1) * b)
        res = {}
        # the three batch losses on this rank's half of the batch (DDP-style local loss)
        for name in ("clip", "filip", "spark"):
            i, t, p, k = leaves(img[sl], txt[sl], patches[sl], tokens[sl])
            s = torch.tensor(8.0, dtype=F64, requires_grad=True)
            if name == "clip":
                loss = clip_loss(i, t, s)
            elif name == "filip":
                loss = filip_loss(p, k, mask[sl], s)
            else:
                loss = sparc_loss(i, t, p, k, mask[sl], s)["loss"]
            loss.backward()
            gr = lambda x: torch.zeros_like(x) if x.grad is None else x.grad.detach()
            res[name] = {
                "loss": loss.detach(),
                "img": gr(i), "txt": gr(t), "patches": gr(p), "tokens": gr(k), "scale": gr(s),
            }
        # gather_with_grad alone: rank r's "loss" is <gathered, W_r>; the gradient on the local slice must be
        # (W_0 + W_1)[slice r], whatever the memory layout of the incoming gradient (einsum/permute give
        # non-contiguous gradients).
        res["gather"] = {}
        for layout in ("contiguous", "permuted"):
            x = torch.zeros(b, 3, 2, dtype=F64, requires_grad=True)
            y = gather_with_grad(x)
            assert y.shape == (world * b, 3, 2)
            wr = torch.randn(2, 3, world * b, generator=torch.Generator().manual_seed(100 + rank), dtype=F64)
            w = wr.permute(2, 1, 0) if layout == "permuted" else wr.permute(2, 1, 0).contiguous()
            (y * w).sum().backward()
            res["gather"][layout] = x.grad.detach()
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    import torch.multiprocessing as mp

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed unavailable")
    world, b = 2, 3
    outdir = tmp_path_factory.mktemp("dist")
    mp.spawn(_dist_worker, args=(world, _free_port(), str(outdir), b), nprocs=world, join=True)
    return world, b, [torch.load(outdir / f"rank{r}.pt") for r in range(world)]


@pytest.mark.slow  # 2 gloo processes
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["clip", "filip", "spark"])
def test_distributed_matches_single_process(dist_results, name):
    world, b, res = dist_results
    img, txt, patches, tokens, mask = _dist_data(b)
    i, t, p, k = leaves(img, txt, patches, tokens)
    s = torch.tensor(8.0, dtype=F64, requires_grad=True)
    if name == "clip":
        full = clip_loss(i, t, s)
    elif name == "filip":
        full = filip_loss(p, k, mask, s)
    else:
        full = sparc_loss(i, t, p, k, mask, s)["loss"]
    gi, gt, gp, gk, gs = grads_of(full, [i, t, p, k, s])
    tol = dict(rtol=1e-5, atol=1e-6)
    # loss value: mean of the ranks' local losses == single-process full-batch loss
    mean_loss = sum(r[name]["loss"].double() for r in res) / world
    torch.testing.assert_close(mean_loss, full.double(), **tol, msg=lambda m: f"{name} loss: {m}")
    # gradients: all_gather's backward sums every rank's loss onto the local slice; DDP then averages over
    # ranks, so local grad / world == single-process grad of the full-batch loss on those rows.
    for r in range(world):
        sl = slice(r * b, (r + 1) * b)
        for key, g_full in (("img", gi), ("txt", gt), ("patches", gp), ("tokens", gk)):
            torch.testing.assert_close(
                res[r][name][key].double() / world, g_full[sl].double(), **tol,
                msg=lambda m, key=key, r=r: f"{name} grad {key} rank {r}: {m}",
            )
    # the (replicated, non-gathered) logit scale: DDP's mean over ranks == full-batch grad
    mean_gs = sum(r_[name]["scale"].double() for r_ in res) / world
    torch.testing.assert_close(mean_gs, gs.double(), **tol, msg=lambda m: f"{name} grad scale: {m}")
    if name == "clip":  # and the loop reference agrees with the full-batch value
        torch.testing.assert_close(mean_loss, ref_clip(img, txt, 8.0), rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # 2 gloo processes
@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
def test_gather_with_grad_distributed_backward(dist_results, layout):
    world, b, res = dist_results
    ws = [
        torch.randn(2, 3, world * b, generator=torch.Generator().manual_seed(100 + r), dtype=F64).permute(2, 1, 0)
        for r in range(world)
    ]
    total = sum(ws)
    for r in range(world):
        torch.testing.assert_close(
            res[r]["gather"][layout], total[r * b : (r + 1) * b], msg=lambda m, r=r: f"rank {r}: {m}"
        )


def test_filip_similarity_is_what_filip_loss_contrasts():
    """The late-interaction similarities FILIP retrieval ranks with: the loss rebuilt from them (cross-entropy both
    ways over the batch) equals filip_loss, and one pair checked by hand (per-patch max over real tokens, mean)."""
    from spark_vlm.losses import filip_loss, filip_similarity, filip_similarity_chunked
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(5, 6, 8, generator=g), torch.randn(5, 4, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    i2t, t2i = filip_similarity(v, t, mask)
    labels = torch.arange(5)
    rebuilt = 0.5 * (F.cross_entropy(3.0 * i2t, labels) + F.cross_entropy(3.0 * t2i, labels))
    torch.testing.assert_close(rebuilt, filip_loss(v, t, mask, 3.0))
    cos = F.normalize(v[2], dim=-1) @ F.normalize(t[1, :2], dim=-1).t()  # image 2, text 1 (2 real tokens)
    assert i2t[2, 1].item() == pytest.approx(cos.max(dim=1).values.mean().item(), abs=1e-6)
    assert t2i[1, 2].item() == pytest.approx(cos.max(dim=0).values.mean().item(), abs=1e-6)
    a, b = filip_similarity_chunked(v, t, mask, image_chunk=2)  # both [images, texts]
    torch.testing.assert_close(a, i2t)
    torch.testing.assert_close(b, t2i.t())


def test_two_way_recall_takes_each_direction_from_its_own_similarity():
    from spark_vlm.metrics.retrieval import retrieval_recall, two_way
    i2t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # perfect image -> text
    t2i = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # every text -> the wrong image
    out = two_way(retrieval_recall, i2t, t2i, [0, 1])
    assert out["image_to_text_R@1"] == 100.0 and out["text_to_image_R@1"] == 0.0 and out["R@1"] == 50.0
    assert two_way(retrieval_recall, i2t, i2t, [0, 1]) == retrieval_recall(i2t, [0, 1])


def test_loss_cost_benchmark_paired_and_per_process_modes(tmp_path):
    """benchmarks/loss_cost.py: the paired mode times every loss against CLIP's step in one process (CLIP against
    itself is exactly 1), the default mode one subprocess per (loss, batch) with its memory."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = str(Path(__file__).resolve().parents[1] / "benchmarks/loss_cost.py")
    out = tmp_path / "paired.json"
    subprocess.run([sys.executable, script, "--paired", "2", "--batch-sizes", "4", "--losses", "sparc", "clip",
                    "--out", str(out)], check=True, capture_output=True)
    (row,) = json.loads(out.read_text())["paired"]
    assert list(row["step_ms"]) == ["clip", "sparc"] and row["vs_clip"]["clip"] == 1.0
    assert row["vs_clip"]["sparc"] > 0 and row["rounds"] == 2
    out = tmp_path / "cost.json"
    subprocess.run([sys.executable, script, "--batch-sizes", "4", "--losses", "clip", "sparc", "--steps", "1",
                    "--out", str(out)], check=True, capture_output=True)
    rows = json.loads(out.read_text())["results"]
    assert [(r["loss"], r["batch_size"]) for r in rows] == [("clip", 4), ("sparc", 4)]
    assert all(r["step_ms"] > 0 and "error" not in r for r in rows)

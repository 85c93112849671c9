"""The fine-grained loss's options (issue 9, item 3), each against a slow per-example reference written from its
description: cross-image negatives (`cross_images`), per-position centring (`centre_positions`), content tokens only
(`fine_mask` + spark_vlm/data/content_tokens.py). Off, each leaves the paper's loss as it was (test_losses.py)."""
from __future__ import annotations

import math

import pytest
import torch

from spark_vlm.data.content_tokens import FunctionTokens
from spark_vlm.losses import clip_loss, sparc_alignment, sparc_fine_grained_loss, sparc_loss
from test_losses import F64, _neg_log_softmax_at, _norm1d, grads_of, leaves, make_batch, ref_alignment, ref_fine


def ref_fine_options(patches, tokens, mask, scale, cross_images=0, centre=False, threshold=None, weights="l1"):
    """Eq. 6 per caption, token by token, with the options: patches centred per position by an explicit mean over
    images; in the token -> grouped row of token l, after the caption's own grouped embeddings, the same token's
    grouping over image (b + m) mod B for m = 1..K."""
    B, P, _ = patches.shape
    L = tokens.shape[1]
    if centre:
        patches = torch.stack([torch.stack([patches[b, p] - sum(patches[k, p] for k in range(B)) / B
                                            for p in range(P)]) for b in range(B)])

    def grouped(image, caption, l):  # token l of `caption` grouped over the patches of `image`
        return ref_alignment(patches[image][None], tokens[caption, l][None, None], threshold=threshold,
                             weights=weights)[1][0][0]

    losses = []
    for b in range(B):
        real = [l for l in range(L) if bool(mask[b, l])]
        if not real:
            continue
        n = len(real)
        t = [_norm1d(tokens[b, l]) for l in real]
        c = [_norm1d(grouped(b, b, l)) for l in real]
        t2c = 0
        for j in range(n):
            row = [scale * (t[j] * c[k]).sum() for k in range(n)]
            row += [scale * (t[j] * _norm1d(grouped((b + m) % B, b, real[j]))).sum() for m in range(1, cross_images + 1)]
            t2c = t2c + _neg_log_softmax_at(row, j)
        c2t = sum(_neg_log_softmax_at([scale * (c[j] * t[k]).sum() for k in range(n)], j) for j in range(n))
        losses.append((t2c + c2t) / (2 * n))
    return sum(losses) / len(losses)


OPTIONS = [(1, False), (3, False), (0, True), (2, True)]


@pytest.mark.parametrize("cross_images, centre", OPTIONS)
def test_options_match_the_reference_value_and_grads(cross_images, centre):
    _, _, patches, tokens, mask = make_batch()
    p, t = leaves(patches, tokens)
    s = torch.tensor(10.0, dtype=F64, requires_grad=True)
    out = sparc_fine_grained_loss(p, t, mask, s, cross_images=cross_images, centre_positions=centre)
    rp, rt = leaves(patches, tokens)
    rs = torch.tensor(10.0, dtype=F64, requires_grad=True)
    ref = ref_fine_options(rp, rt, mask, rs, cross_images, centre)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    for name, gm, gr in zip(["patches", "tokens", "logit_scale"], grads_of(out, [p, t, s]), grads_of(ref, [rp, rt, rs])):
        torch.testing.assert_close(gm.double(), gr, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    assert not math.isclose(out.item(), ref_fine(patches, tokens, mask, 10.0).item(), rel_tol=1e-4), "option had no effect"


@pytest.mark.parametrize("cross_images, centre, threshold", [(0, False, 0.5), (2, True, 0.3)])
def test_sparsity_threshold_matches_the_reference(cross_images, centre, threshold):
    """`threshold` (config `fine_threshold`) replaces the paper's 1/P in Eq. 4, everywhere the alignment runs."""
    _, _, patches, tokens, mask = make_batch()
    out = sparc_fine_grained_loss(patches, tokens, mask, 10.0, cross_images=cross_images, centre_positions=centre,
                                  threshold=threshold)
    ref = ref_fine_options(patches, tokens, mask, 10.0, cross_images, centre, threshold)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    paper = ref_fine_options(patches, tokens, mask, 10.0, cross_images, centre)
    assert not math.isclose(out.item(), paper.item(), rel_tol=1e-4), "the threshold had no effect"


@pytest.mark.parametrize("cross_images, centre, threshold", [(0, False, None), (2, True, None), (0, False, 0.0),
                                                             (1, False, 0.5)])
def test_softmax_weights_match_the_reference_value_and_grads(cross_images, centre, threshold):
    """`weights="softmax"` (config `fine_weights`, the paper's ablation of Eq. 5): a softmax of the raw similarities
    over the kept patches, in the loss and its gradients, with every other option."""
    _, _, patches, tokens, mask = make_batch()
    p, t = leaves(patches, tokens)
    out = sparc_fine_grained_loss(p, t, mask, 10.0, cross_images=cross_images, centre_positions=centre,
                                  threshold=threshold, weights="softmax")
    rp, rt = leaves(patches, tokens)
    ref = ref_fine_options(rp, rt, mask, 10.0, cross_images, centre, threshold, weights="softmax")
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    for name, gm, gr in zip(["patches", "tokens"], grads_of(out, [p, t]), grads_of(ref, [rp, rt])):
        torch.testing.assert_close(gm.double(), gr, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    l1 = ref_fine_options(patches, tokens, mask, 10.0, cross_images, centre, threshold)
    assert not math.isclose(out.item(), l1.item(), rel_tol=1e-4), "softmax had no effect"


def test_softmax_weights_are_a_distribution_over_the_kept_patches():
    _, _, patches, tokens, mask = make_batch(dtype=torch.float32)
    _, l1 = sparc_alignment(patches, tokens, mask)
    _, soft = sparc_alignment(patches, tokens, mask, weights="softmax")
    torch.testing.assert_close(soft.sum(-1), mask.float())  # rows sum to 1, padding rows to 0
    assert torch.equal(soft > 0, l1 > 0)  # the same patches kept (Eq. 4), only the normalisation differs
    with pytest.raises(ValueError, match="weights must be 'l1', 'softmax' or 'max', got 'l2'"):
        sparc_alignment(patches, tokens, mask, weights="l2")


@pytest.mark.parametrize("cross_images, centre", [(0, False), (2, True), (3, False)])
def test_max_weights_match_the_reference_value_and_grads(cross_images, centre):
    """`weights="max"` (config `fine_weights=max`): each token groups only its most similar patch, in the loss and
    its gradients (which reach the chosen patches and the tokens, not the choice), with the other options."""
    _, _, patches, tokens, mask = make_batch()
    p, t = leaves(patches, tokens)
    out = sparc_fine_grained_loss(p, t, mask, 10.0, cross_images=cross_images, centre_positions=centre, weights="max")
    rp, rt = leaves(patches, tokens)
    ref = ref_fine_options(rp, rt, mask, 10.0, cross_images, centre, weights="max")
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    for name, gm, gr in zip(["patches", "tokens"], grads_of(out, [p, t]), grads_of(ref, [rp, rt])):
        torch.testing.assert_close(gm.double(), gr, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    l1 = ref_fine_options(patches, tokens, mask, 10.0, cross_images, centre)
    assert not math.isclose(out.item(), l1.item(), rel_tol=1e-4), "max had no effect"


def test_max_weights_are_one_hot_at_the_best_patch():
    _, _, patches, tokens, mask = make_batch(dtype=torch.float32)
    grouped, best = sparc_alignment(patches, tokens, mask, weights="max")
    argmax = torch.einsum("bld,bpd->blp", tokens, patches).argmax(-1)  # [B, L]
    real = mask.float().unsqueeze(-1)
    torch.testing.assert_close(best, torch.nn.functional.one_hot(argmax, patches.shape[1]).float() * real)
    chosen = torch.gather(patches, 1, argmax.unsqueeze(-1).expand(-1, -1, patches.shape[2]))  # [B, L, D]
    torch.testing.assert_close(grouped, chosen * real)


@pytest.mark.parametrize("cross_images, centre", OPTIONS)
def test_options_under_bf16_autocast_match_fp32(cross_images, centre):
    _, _, patches, tokens, mask = make_batch(B=4, P=16, L=5, D=32, dtype=torch.float32, seed=5)
    kw = dict(cross_images=cross_images, centre_positions=centre)
    l32 = sparc_fine_grained_loss(patches, tokens, mask, 10.0, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l_ac = sparc_fine_grained_loss(patches, tokens, mask, 10.0, **kw)
    assert l_ac.dtype == torch.float32
    torch.testing.assert_close(l_ac, l32, rtol=1e-4, atol=1e-5)  # fp32 inputs: the whole loss stays fp32

    pb, tb = leaves(patches.bfloat16(), tokens.bfloat16())  # what a bf16 model hands the loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lb = sparc_fine_grained_loss(pb, tb, mask, 10.0, **kw)
    ref = ref_fine_options(pb.detach().double(), tb.detach().double(), mask, 10.0, cross_images, centre)
    torch.testing.assert_close(lb.double(), ref, rtol=1e-4, atol=1e-4)
    lb.backward()
    assert torch.isfinite(pb.grad.float()).all() and torch.isfinite(tb.grad.float()).all()


def test_max_weights_under_bf16_autocast():
    """What a bf16 model hands the loss: the choice and the loss in fp32, as the fp64 reference on the same values."""
    _, _, patches, tokens, mask = make_batch(B=4, P=16, L=5, D=32, dtype=torch.float32, seed=5)
    pb, tb = leaves(patches.bfloat16(), tokens.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lb = sparc_fine_grained_loss(pb, tb, mask, 10.0, cross_images=2, centre_positions=True, weights="max")
    assert lb.dtype == torch.float32
    ref = ref_fine_options(pb.detach().double(), tb.detach().double(), mask, 10.0, 2, True, weights="max")
    torch.testing.assert_close(lb.double(), ref, rtol=1e-4, atol=1e-4)
    lb.backward()
    assert torch.isfinite(pb.grad.float()).all() and torch.isfinite(tb.grad.float()).all()


def test_centring_ignores_a_per_position_code():
    """A code added at each position to every image (what a blank image reproduces) cannot change the centred loss;
    the paper's loss does change."""
    _, _, patches, tokens, mask = make_batch(P=6, D=8, dtype=torch.float32)
    code = 5.0 * torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(1))
    centred = sparc_fine_grained_loss(patches, tokens, mask, 10.0, centre_positions=True)
    torch.testing.assert_close(sparc_fine_grained_loss(patches + code, tokens, mask, 10.0, centre_positions=True),
                               centred, rtol=1e-4, atol=1e-5)
    assert abs(sparc_fine_grained_loss(patches + code, tokens, mask, 10.0)
               - sparc_fine_grained_loss(patches, tokens, mask, 10.0)) > 1e-2


@pytest.mark.parametrize("cross_images", [1, 3])
def test_cross_images_cannot_be_won_by_identical_images(cross_images):
    """When every image is the same, a token's other-image groupings equal its own: its token -> grouped term is at
    least log(K + 1), so the loss (half of it plus a non-negative half) is at least log(K + 1) / 2."""
    _, _, patches, tokens, mask = make_batch(dtype=torch.float32)
    same = patches[:1].expand_as(patches)
    for scale in (1.0, 100.0):
        loss = sparc_fine_grained_loss(same, tokens, mask, scale, cross_images=cross_images)
        assert loss >= math.log(cross_images + 1) / 2 - 1e-5


def test_cross_images_needs_other_images():
    _, _, patches, tokens, mask = make_batch(B=4)
    with pytest.raises(ValueError, match=r"cross_images must be in \[0, batch size 4\), got 4"):
        sparc_fine_grained_loss(patches, tokens, mask, 10.0, cross_images=4)


def test_fine_mask_restricts_only_the_fine_loss():
    img, txt, patches, tokens, mask = make_batch()
    fine_mask = mask.clone()
    fine_mask[0, 1] = fine_mask[3, 0] = False
    out = sparc_loss(img, txt, patches, tokens, mask, 10.0, fine_mask=fine_mask)
    torch.testing.assert_close(out["global_loss"], clip_loss(img, txt, 10.0))
    torch.testing.assert_close(out["fine_loss"].double(), ref_fine(patches, tokens, fine_mask, 10.0), rtol=1e-5, atol=1e-6)
    plain = sparc_loss(img, txt, patches, tokens, mask, 10.0)
    assert torch.equal(sparc_loss(img, txt, patches, tokens, mask, 10.0, fine_mask=mask)["loss"], plain["loss"])


# ---------------------------------------------------------------------------------------------- content tokens
class _Pieces:
    """A stand-in tokenizer: only `pieces` and `vocab_size` are read."""

    def __init__(self, pieces):
        self.table, self.vocab_size = pieces, len(pieces)

    def pieces(self, ids):
        return [self.table[i] for i in ids]


def test_content_mask_drops_function_words_and_punctuation_only():
    vocab = ["<pad>", "▁a", "pple", "▁red", ",", "▁the", "▁there", "▁are", "▁two", "▁circles", "▁and", "▁of",
             "Ġof", "▁", "ring", "▁left"]
    ids = {p: i for i, p in enumerate(vocab)}
    caption = ["▁there", "▁are", "▁two", "▁red", "▁circles", ",", "▁a", "pple", "▁and", "▁the", "▁", "ring",
               "▁left", "▁of", "▁a"]
    row = [ids[p] for p in caption] + [0, 0]
    input_ids = torch.tensor([row])
    attention = torch.tensor([[True] * len(caption) + [False, False]])
    mask = FunctionTokens(_Pieces(vocab)).content_mask(input_ids, attention)
    kept = [p for p, m in zip(caption, mask[0].tolist()) if m]
    assert kept == ["▁two", "▁red", "▁circles", "▁a", "pple", "▁", "ring", "▁left"]
    assert not mask[0, len(caption):].any()
    # byte-level BPE: the first word carries no marker, and "Ġof" is the function word "of"
    first = FunctionTokens(_Pieces(["<pad>", "the", "Ġred", "Ġof"])).content_mask(torch.tensor([[1, 2, 3]]),
                                                                                   torch.ones(1, 3, dtype=torch.bool))
    assert first.tolist() == [[False, True, False]]


def test_content_mask_on_a_trained_sentencepiece(tmp_path):
    from spark_vlm.data.tokenizer import train_sentencepiece

    captions = ["there are two red circles and a blue star", "a small green square left of an orange ring",
                "three shapes: a red disc, a blue box and a star"] * 20
    tok = train_sentencepiece(captions, vocab_size=1000, cache_dir=tmp_path)  # whole words, as on the scenes
    enc = tok(["there are two red circles, and a blue star"], 16)
    mask = FunctionTokens(tok).content_mask(enc["input_ids"], enc["attention_mask"])
    pieces = tok.pieces(enc["input_ids"][0][enc["attention_mask"][0]].tolist())
    words = "".join(p for p, m in zip(pieces, mask[0].tolist()) if m).replace("▁", " ").split()
    assert words == ["two", "red", "circles", "blue", "star"]


@pytest.mark.parametrize("weights", ["softmax", "max"])
def test_config_keys_reach_the_loss(weights):
    """stage1_loss passes each fine_* key to sparc_loss; the content mask comes from the batch's token ids."""
    from spark_vlm.data.images import to_pixel_values
    from spark_vlm.models.dual_encoder import SparkConfig, SparkModel
    from spark_vlm.training.config import load_config
    from spark_vlm.training.stage1 import stage1_loss
    from spark_vlm.training.stage1_config import Stage1Config

    vocab = ["<pad>", "▁a", "▁red", "▁circle", "▁of", ",", "▁two", "▁stars"]
    torch.manual_seed(0)
    model = SparkModel(SparkConfig(image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
                                   vocab_size=len(vocab), max_text_len=6, text_width=16, text_layers=1,
                                   text_heads=2, embed_dim=8)).eval()
    ids = torch.tensor([[1, 2, 3, 0, 0, 0], [6, 2, 7, 4, 1, 3], [1, 3, 5, 6, 7, 0]])
    batch = {"images": torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8), "input_ids": ids,
             "attention_mask": ids != 0}
    function_tokens = FunctionTokens(_Pieces(vocab))
    cfg = load_config(Stage1Config, None, ["fine_cross_images=2", "fine_content_tokens_only=true",
                                           "fine_centre_positions=true", "fine_threshold=0.4",
                                           f"fine_weights={weights}"])
    with torch.no_grad():
        got = stage1_loss(cfg, model, batch, function_tokens)
        out = model(to_pixel_values(batch["images"]), ids, ids != 0)
        content = torch.tensor([[0, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 1], [0, 1, 0, 1, 1, 0]], dtype=torch.bool)
        want = sparc_loss(out.image_embeds, out.text_embeds, out.patch_embeds, out.token_embeds, out.token_mask,
                          out.logit_scale, fine_mask=content, cross_images=2, centre_positions=True,
                          threshold=0.4, weights=weights)
        paper = stage1_loss(load_config(Stage1Config, None, []), model, batch)
    for key in ("loss", "global_loss", "fine_loss"):
        torch.testing.assert_close(got[key], want[key])
    torch.testing.assert_close(paper["global_loss"], want["global_loss"])
    assert abs(paper["fine_loss"] - got["fine_loss"]) > 1e-3

"""The SPARK dual encoder: shapes, the spec's pooling rules, save/load round trip, AutoModel."""
import math

import pytest
import torch
from transformers import AutoModel

from spark_vlm.models import SparkConfig, SparkModel

TINY = dict(image_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2, vocab_size=50,
            max_text_len=12, text_width=32, text_layers=2, text_heads=2, embed_dim=16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SparkModel(SparkConfig(**TINY)).eval()


def batch(b=3, length=10):
    g = torch.Generator().manual_seed(1)
    px = torch.randn(b, 3, 32, 32, generator=g)
    ids = torch.randint(1, 50, (b, length), generator=g)
    mask = torch.zeros(b, length, dtype=torch.bool)
    for i, n in enumerate([10, 4, 1][:b]):
        mask[i, :n] = True
    return px, ids.masked_fill(~mask, 0), mask


def test_shapes_and_patch_tokens_without_cls(model):
    px, ids, mask = batch()
    out = model(px, ids, mask)
    assert out.patch_embeds.shape == (3, 16, 16)  # (32/8)^2 patches, no extra CLS token
    assert out.token_embeds.shape == (3, 10, 16) and out.token_mask.dtype == torch.bool
    assert out.image_embeds.shape == out.text_embeds.shape == (3, 16)
    assert out.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_global_embeddings_follow_the_spec(model):
    px, ids, mask = batch()
    with torch.no_grad():
        out = model(px, ids, mask)
        feats = model.vision_model(px)
        expect_img = model.vision_proj(model.vision_head(feats.mean(1)))  # g_v(h_v(mean_p f_v))
        tfeats = model.text_model(ids, mask)
        expect_txt = torch.stack([model.text_proj(tfeats[i, mask[i]].mean(0)) for i in range(3)])
    torch.testing.assert_close(out.image_embeds, expect_img)
    torch.testing.assert_close(out.text_embeds, expect_txt)
    torch.testing.assert_close(out.patch_embeds, model.vision_proj(feats))  # no h_v on the local path
    torch.testing.assert_close(model.encode_image(px), torch.nn.functional.normalize(expect_img, dim=-1))


def test_padding_does_not_change_text_embeddings(model):
    px, ids, mask = batch()
    other = ids.clone()
    other[~mask] = 7  # garbage in the padded positions
    with torch.no_grad():
        a, b = model.encode_text(ids, mask), model.encode_text(other, mask)
        ta, _ = model.token_embeddings(ids, mask)
        tb, _ = model.token_embeddings(other, mask)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ta[mask], tb[mask])
    # default mask = ids != pad
    torch.testing.assert_close(model.encode_text(ids), a)


def test_packed_text_tower_equals_each_caption_alone(model):
    """The text tower runs its blocks on the real tokens only; a per-caption loop on the unpadded grid (no mask at
    all) is the slow reference, for the features and for the gradients. Padding positions hold their normed input
    embedding (finite and non-zero, so a plain x / |x| downstream cannot turn them into NaN)."""
    _, ids, mask = batch()
    tower = model.text_model

    def alone(i):
        n = int(mask[i].sum())
        x = tower.token_embed(ids[i:i + 1, :n]) + tower.pos_embed[:, :n]
        for block in tower.blocks:
            x = block(x)  # [1, n, W]: the grid path, nothing to mask
        return tower.ln_final(x)[0]

    out = tower(ids, mask)
    for i in range(len(ids)):
        torch.testing.assert_close(out[i, mask[i]], alone(i))
    pads = tower.ln_final(tower.token_embed(ids) + tower.pos_embed[:, :ids.shape[1]])[~mask]
    torch.testing.assert_close(out[~mask], pads)
    assert (out[~mask].norm(dim=-1) > 0.1).all()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)) * mask[..., None]  # real tokens
    packed = torch.autograd.grad((out * weights).sum(), list(tower.parameters()))
    loop = sum((alone(i) * weights[i, mask[i]]).sum() for i in range(len(ids)))
    for g_packed, g_loop in zip(packed, torch.autograd.grad(loop, list(tower.parameters()))):
        torch.testing.assert_close(g_packed, g_loop, rtol=1e-4, atol=1e-5)  # fp32 sums in another order


def test_logit_scale_is_clamped():
    m = SparkModel(SparkConfig(**TINY))
    with torch.no_grad():
        m.log_logit_scale.fill_(math.log(1000.0))
    assert m.logit_scale.item() == pytest.approx(100.0)


def test_save_load_round_trip_is_exact(model, tmp_path):
    px, ids, mask = batch()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = SparkModel.from_pretrained(tmp_path).eval()
    auto = AutoModel.from_pretrained(tmp_path).eval()
    assert type(auto) is SparkModel
    with torch.no_grad():
        for m in (loaded, auto):
            assert torch.equal(m.encode_image(px), model.encode_image(px))
            assert torch.equal(m.encode_text(ids, mask), model.encode_text(ids, mask))
            assert torch.equal(m.logit_scale, model.logit_scale)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = SparkModel(SparkConfig(**TINY))
    b = SparkModel(SparkConfig(**TINY))
    b.load_state_dict(a.state_dict())
    b.activation_checkpointing_enable()
    a.train(), b.train()
    px, ids, mask = batch()
    for m in (a, b):
        out = m(px, ids, mask)
        (out.image_embeds.sum() + out.token_embeds[mask].pow(2).sum()).backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_bf16_autocast_forward_is_close(model):
    px, ids, mask = batch()
    with torch.no_grad():
        ref = model.encode_image(px)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.encode_image(px)
    assert low.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(ref, low.float()).min() > 0.99


def test_conv_stem_keeps_the_token_grid_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = SparkModel(SparkConfig(**TINY, vision_stem="conv")).eval()
    strided = [m for m in model.vision_model.patch_embed if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 3  # log2(patch_size=8) stride-2 convolutions
    px, ids, mask = batch()
    assert model(px, ids, mask).patch_embeds.shape == (3, 16, 16)  # the patchify stem's (32/8)^2 grid
    model.save_pretrained(tmp_path)
    loaded = SparkModel.from_pretrained(tmp_path).eval()
    assert loaded.config.vision_stem == "conv"
    with torch.no_grad():
        assert torch.equal(loaded.image_features(px), model.image_features(px))
    # A checkpoint saved before the option existed (no vision_stem in config.json) is a patchify model.
    assert SparkConfig(**TINY).vision_stem == "patch"
    assert isinstance(SparkModel(SparkConfig(**TINY)).vision_model.patch_embed, torch.nn.Conv2d)


def test_conv_stem_matches_a_per_image_reference_and_ignores_the_batch():
    """The stem against hand-written convolutions + group norm, one image at a time: an image's features depend
    neither on the other images of its batch nor on train/eval mode (no running statistics)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = SparkModel(SparkConfig(**TINY, vision_stem="conv"))
    for p in model.parameters():  # non-trivial affine norms and biases
        torch.nn.init.normal_(p, std=0.3)
    stem = model.vision_model.patch_embed
    px = batch()[0]

    def reference(image):
        x = image[None].double()
        for conv, norm in zip(stem[0::3], stem[1::3]):
            x = F.conv2d(x, conv.weight.double(), conv.bias.double(), stride=2, padding=1)
            groups = x.view(8, -1)  # 8 groups of channels x pixels
            groups = (groups - groups.mean(1, keepdim=True)) / (groups.var(1, unbiased=False, keepdim=True)
                                                                 + 1e-5).sqrt()
            x = (groups.view_as(x) * norm.weight.double()[:, None, None] + norm.bias.double()[:, None, None]).relu()
        return F.conv2d(x, stem[-1].weight.double(), stem[-1].bias.double())[0]

    with torch.no_grad():
        together = stem(px)
        model.eval()
        for i in range(len(px)):
            torch.testing.assert_close(together[i].double(), reference(px[i]), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(stem(px[i:i + 1])[0], together[i], rtol=1e-5, atol=1e-6)  # alone, eval mode


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="not divisible"):
        SparkModel(SparkConfig(**{**TINY, "patch_size": 7}))
    with pytest.raises(ValueError, match="power of 2"):
        SparkModel(SparkConfig(**{**TINY, "image_size": 36, "patch_size": 6, "vision_stem": "conv"}))
    with pytest.raises(ValueError, match="unknown vision stem"):
        SparkModel(SparkConfig(**TINY, vision_stem="round"))
    m = SparkModel(SparkConfig(**TINY))
    with pytest.raises(ValueError, match="exceeds max_text_len"):
        m.encode_text(torch.ones(1, 13, dtype=torch.long))


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_stem_flops_match_torchs_flop_counter(stem):
    """The MFU numerator's stem term against torch's FlopCounterMode on a real forward + backward: convolutions are
    counted at their own resolutions, not once per patch token (the conv stem's first layer runs at 16x16 here)."""
    from torch.utils.flop_counter import FlopCounterMode

    from spark_vlm.training.stage1 import stem_train_flops

    model = SparkModel(SparkConfig(**TINY, vision_stem=stem))
    px = torch.randn(2, 3, 32, 32, requires_grad=True)  # the 6x rule: input gradients at every layer too
    with FlopCounterMode(display=False) as counter:
        model.vision_model.patch_embed(px).sum().backward()
    assert stem_train_flops(model) == pytest.approx(counter.get_total_flops() / 2, rel=0.01)

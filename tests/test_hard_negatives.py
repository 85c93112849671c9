"""Shape-swapped hard negatives (stage-1 `hard_negatives=shape_swap`): the swapped captions, their falsity on the
scene, the NegCLIP-style global loss against a per-image reference, the dataset plumbing and the config checks."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from spark_vlm.data.hard_negatives import scene_negatives, shape_swap_negative, shape_swaps
from spark_vlm.data.pairs import CaptionedImages
from spark_vlm.data.scene_truth import holds, parse_caption
from spark_vlm.data.scene_vocab import PLURALS, WORD_TO_SHAPE
from spark_vlm.data.scenes import SceneConfig, SceneDataset, without_pixels
from spark_vlm.losses import clip_loss
from test_losses import F64, grads_of, leaves


def test_every_swap_changes_one_shape_word_to_another_class_and_keeps_its_number():
    caption = "four objects: a black ring, two orange diamonds and a large green ring"
    swaps = shape_swaps(caption)
    assert len(swaps) == 3 * 7  # three shape words, seven other classes each
    words = caption.split()
    singular_of = {p: w for w, p in PLURALS.items()}
    for swap in swaps:
        new = swap.split()
        diff = [(a, b) for a, b in zip(words, new) if a != b]
        assert len(new) == len(words) and len(diff) == 1
        old_word, new_word = (w.strip(",") for w in diff[0])
        assert (new_word in singular_of) == (old_word in singular_of)  # plural stays plural
        shape = lambda w: WORD_TO_SHAPE[singular_of.get(w, w)]
        assert shape(new_word) != shape(old_word)
    assert shape_swaps("red, blue and green shapes") == []  # no shape word, no negative


def test_negatives_are_false_of_their_scene_and_captions_without_shapes_get_none():
    config = SceneConfig()
    scenes = SceneDataset("train", 40, config)
    metas = [without_pixels(scenes[i]) for i in range(40)]
    negatives = scene_negatives(metas, config.relation_margin * config.image_size, seed=0)
    assert negatives == scene_negatives(metas, config.relation_margin * config.image_size, seed=0)  # by seed
    made = 0
    for meta, negs in zip(metas, negatives):
        for caption, kind, neg in zip(meta["captions"], meta["caption_kinds"], negs):
            assert holds(parse_caption(caption, kind), meta, config.relation_margin * config.image_size)
            if kind in ("colour", "size"):
                assert neg is None
                continue
            assert neg is not None and neg in shape_swaps(caption)
            assert not holds(parse_caption(neg, kind), meta, config.relation_margin * config.image_size)
            made += 1
    assert made > 100


def test_no_negative_when_every_swap_stays_true():
    # One red object of every class: "a picture of a red circle" stays true whatever shape it names.
    shapes = ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring"]
    scene = {"objects": [{"shape": s, "color": "red", "size": "small", "center": (8.0 * k, 8.0)}
                         for k, s in enumerate(shapes)], "background": "solid"}
    rng = np.random.default_rng(0)
    assert shape_swap_negative("a picture of a red circle", "partial", scene, 9.6, rng) is None
    scene["objects"] = scene["objects"][:1]
    assert shape_swap_negative("a picture of a red circle", "partial", scene, 9.6, rng) is not None


def ref_clip_with_negatives(img, txt, neg, has_neg, scale):
    """Per image: cross-entropy over [every caption; every existing negative]; per caption: over every image."""
    B = img.shape[0]
    n = lambda x: x / torch.sqrt((x * x).sum())
    i2t, t2i = 0, 0
    for i in range(B):
        cols = [scale * (n(img[i]) * n(txt[j])).sum() for j in range(B)]
        cols += [scale * (n(img[i]) * n(neg[j])).sum() for j in range(B) if has_neg[j]]
        i2t = i2t - cols[i] + torch.logsumexp(torch.stack(cols), 0)
        rows = [scale * (n(txt[i]) * n(img[j])).sum() for j in range(B)]
        t2i = t2i - rows[i] + torch.logsumexp(torch.stack(rows), 0)
    return 0.5 * (i2t + t2i) / B


def test_clip_loss_with_negatives_matches_the_reference_value_and_grads():
    g = torch.Generator().manual_seed(0)
    img, txt, neg = (torch.randn(5, 8, generator=g, dtype=F64) for _ in range(3))
    has_neg = torch.tensor([True, False, True, True, False])
    a, b, c = leaves(img, txt, neg)
    scale = torch.tensor(7.0, dtype=F64, requires_grad=True)
    out = clip_loss(a, b, scale, c, has_neg)
    ra, rb, rc = leaves(img, txt, neg)
    rs = torch.tensor(7.0, dtype=F64, requires_grad=True)
    ref = ref_clip_with_negatives(ra, rb, rc, has_neg, rs)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    for gm, gr in zip(grads_of(out, [a, b, c, scale]), grads_of(ref, [ra, rb, rc, rs])):
        torch.testing.assert_close(gm.double(), gr, rtol=1e-5, atol=1e-6)
    # No negative in the batch: the plain loss.
    none = clip_loss(img, txt, 7.0, neg, torch.zeros(5, dtype=torch.bool))
    torch.testing.assert_close(none, clip_loss(img, txt, 7.0))
    # A negative identical to the true caption costs exactly log 2 more on that image's row than nothing.
    assert clip_loss(img, txt, 7.0, txt, torch.ones(5, dtype=torch.bool)) > clip_loss(img, txt, 7.0)


class _WordTokenizer:
    """`(texts, max_len) -> ids/mask` with one id per word (enough to see which text a row holds)."""

    def __init__(self):
        self.vocab = {"<pad>": 0}

    def __call__(self, texts, max_len):
        rows = [[self.vocab.setdefault(w, len(self.vocab)) for w in t.split()][:max_len] for t in texts]
        ids = torch.zeros(len(rows), max_len, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def decode(self, ids):
        words = {v: k for k, v in self.vocab.items()}
        return " ".join(words[i] for i in ids.tolist() if i)


def test_dataset_serves_the_negative_of_the_drawn_caption():
    captions = [["one red circle", "red shapes"], ["two blue stars", "a picture of two blue stars"]]
    negatives = [["one red square", None], ["two blue rings", "a picture of two blue crosses"]]
    tok = _WordTokenizer()
    data = CaptionedImages(np.zeros((2, 4, 4, 3), np.uint8), captions, [1, 2], tokenizer=tok, max_len=8,
                           negatives=negatives)
    seen = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        for i in range(2):
            item = data[i]
            caption = tok.decode(item["input_ids"])
            k = captions[i].index(caption)
            seen.add((i, k))
            assert bool(item["has_negative"]) == (negatives[i][k] is not None)
            if negatives[i][k] is not None:
                assert tok.decode(item["neg_input_ids"]) == negatives[i][k]
    assert len(seen) == 4
    with pytest.raises(ValueError, match="one entry"):
        CaptionedImages(np.zeros((2, 4, 4, 3), np.uint8), captions, [1, 2], tokenizer=tok, max_len=8,
                        negatives=[["x"], ["y", None]])


@pytest.mark.parametrize("overrides, message", [
    (["loss=filip", "hard_negatives=shape_swap"], "hard_negatives: is an option of the global loss"),
    (["hard_negatives=shape_swap", "data.kind=imagefolder", "data.train_path=."], "hard_negatives: shape_swap needs"),
    (["hard_negatives=words"], "hard_negatives"),
])
def test_config_refuses_what_it_cannot_do(overrides, message):
    from spark_vlm.training.config import ConfigError, load_config
    from spark_vlm.training.stage1_config import Stage1Config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(Stage1Config, None, overrides)


def test_stage1_loss_adds_the_negatives_to_the_global_loss_only():
    from spark_vlm.data.images import to_pixel_values
    from spark_vlm.losses import sparc_loss
    from spark_vlm.models.dual_encoder import SparkConfig, SparkModel
    from spark_vlm.training.config import load_config
    from spark_vlm.training.stage1 import stage1_loss
    from spark_vlm.training.stage1_config import Stage1Config

    torch.manual_seed(0)
    model = SparkModel(SparkConfig(image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
                                   vocab_size=9, max_text_len=5, text_width=16, text_layers=1, text_heads=2,
                                   embed_dim=8)).eval()
    ids = torch.tensor([[1, 2, 3, 0, 0], [4, 2, 5, 6, 0], [1, 7, 0, 0, 0]])
    neg = torch.tensor([[1, 2, 8, 0, 0], [4, 2, 5, 3, 0], [1, 0, 0, 0, 0]])
    batch = {"images": torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8), "input_ids": ids,
             "attention_mask": ids != 0, "neg_input_ids": neg, "neg_attention_mask": neg != 0,
             "has_negative": torch.tensor([True, True, False])}
    for loss in ("sparc", "clip"):
        cfg = load_config(Stage1Config, None, [f"loss={loss}", "hard_negatives=shape_swap"])
        with torch.no_grad():
            got = stage1_loss(cfg, model, batch)
            out = model(to_pixel_values(batch["images"]), ids, ids != 0)
            neg_embeds = model.encode_text(neg, neg != 0, normalize=False)
            if loss == "clip":
                want = {"loss": clip_loss(out.image_embeds, out.text_embeds, out.logit_scale, neg_embeds,
                                          batch["has_negative"])}
            else:
                want = sparc_loss(out.image_embeds, out.text_embeds, out.patch_embeds, out.token_embeds,
                                  out.token_mask, out.logit_scale, negative_text_embeds=neg_embeds,
                                  has_negative=batch["has_negative"])
                plain = stage1_loss(load_config(Stage1Config, None, []), model, batch)
                torch.testing.assert_close(got["fine_loss"], plain["fine_loss"])
                assert got["global_loss"] > plain["global_loss"]
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(got["loss"]))

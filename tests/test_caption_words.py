"""The caption-word loss (stage-1 `lambda_words`, losses.caption_word_loss): the IDF, the images' word bags and
the loss against per-caption loops, the trainer's wiring (total = contrastive + lambda * word loss; the word loss
trains the vision side only), the config checks, a save/load round trip, and a tiny model that learns to name
colours from pixels."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from spark_vlm.data.pairs import CaptionedImages, image_word_ids
from spark_vlm.losses import caption_word_idf, caption_word_loss
from spark_vlm.models.dual_encoder import SparkConfig, SparkModel

IDS = torch.tensor([[3, 4, 3, 0, 0], [5, 4, 6, 7, 0], [0, 0, 0, 0, 0], [2, 2, 2, 2, 2]])
MASK = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]).bool()


def idf_loop(ids, mask, vocab, ignore):
    n = len(ids)
    df = [sum(1 for row, m in zip(ids.tolist(), mask.tolist()) if any(t == v and k for t, k in zip(row, m)))
          for v in range(vocab)]
    return torch.tensor([0.0 if v in ignore else math.log((1 + n) / (1 + df[v])) + 1 for v in range(vocab)])


def bags_of(ids, mask):
    """-1 padded word ids of each caption (one image per caption), the loss's input."""
    return image_word_ids(ids, mask, list(range(len(ids))), len(ids))


def loss_loop(logits, ids, mask, idf):
    total, counted = 0.0, 0
    for row, m, z in zip(ids.tolist(), mask.tolist(), logits.double()):
        words = {t for t, k in zip(row, m) if k}
        weights = {t: float(idf[t]) for t in words if idf[t] > 0}
        if not weights:
            continue  # a caption with no weighted word is left out
        logp = z.log_softmax(-1)
        total += -sum(w * logp[t] for t, w in weights.items()) / sum(weights.values())
        counted += 1
    return total / max(counted, 1)


def test_idf_matches_a_document_frequency_loop_and_ignores_padding():
    idf = caption_word_idf(IDS, MASK, 9, ignore_ids=(0,))
    torch.testing.assert_close(idf, idf_loop(IDS, MASK, 9, {0}))
    assert idf[0] == 0 and idf[4] < idf[5]  # word 4 is in two captions, word 5 in one


def test_loss_matches_a_per_caption_loop_and_leaves_out_captions_without_words():
    torch.manual_seed(0)
    logits = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    idf = caption_word_idf(IDS, MASK, 9, ignore_ids=(0, 2))  # row 3 holds only the ignored id 2: left out
    got = caption_word_loss(logits, bags_of(IDS, MASK), idf)
    want = loss_loop(logits, IDS, MASK, idf)
    torch.testing.assert_close(got.double(), torch.as_tensor(want, dtype=torch.float64))
    got.backward()
    assert logits.grad[2:].abs().sum() == 0  # no word, no gradient
    with torch.autocast("cpu", torch.bfloat16):  # the loss is computed in fp32 under autocast
        low = caption_word_loss(logits.detach().bfloat16(), bags_of(IDS, MASK), idf)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), torch.as_tensor(want, dtype=torch.float64), rtol=2e-2, atol=2e-2)


def test_a_padding_id_that_is_also_a_real_word_counts_where_it_is_unmasked():
    ids = torch.tensor([[1, 2, 2], [1, 3, 1]])  # id 1 pads row 1's tail but is a real word in both rows
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]]).bool()
    idf = caption_word_idf(ids, mask, 4)
    torch.testing.assert_close(idf, idf_loop(ids, mask, 4, set()))
    logits = torch.randn(2, 4)
    torch.testing.assert_close(caption_word_loss(logits, bags_of(ids, mask), idf).double(),
                               torch.as_tensor(loss_loop(logits, ids, mask, idf), dtype=torch.float64))


def test_an_images_word_bag_is_the_union_of_its_captions_words():
    from spark_vlm.data.tokenizer import train_sentencepiece

    captions = [["a red circle", "one circle"], ["two blue stars"], ["a red star", "stars", "a blue circle"]]
    tokenizer = train_sentencepiece([c for caps in captions for c in caps] * 20, vocab_size=40)
    data = CaptionedImages(np.zeros((3, 4, 4, 3), np.uint8), captions, [0, 1, 2], tokenizer, max_len=8,
                           word_ids=True)
    for i, caps in enumerate(captions):
        want = sorted({t for c in caps for t in tokenizer.encode(c)[:8]})
        got = data[i]["word_ids"]
        assert got[got >= 0].tolist() == want and (got[len(want):] == -1).all()
    assert "word_ids" not in CaptionedImages(np.zeros((3, 4, 4, 3), np.uint8), captions, [0, 1, 2], tokenizer, 8)[0]


def tiny_model(word_head=True, pooling="mean"):
    return SparkModel(SparkConfig(image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
                                  vocab_size=9, max_text_len=5, text_width=16, text_layers=1, text_heads=2,
                                  embed_dim=8, caption_word_head=word_head, word_pooling=pooling))


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_word_logits_match_a_per_image_per_word_loop(pooling):
    """mean: the head on the mean patch feature; max: each word's score at its best patch."""
    torch.manual_seed(0)
    model = tiny_model(pooling=pooling).eval()
    x, ids = torch.randn(2, 3, 16, 16), IDS[:2]
    with torch.no_grad():
        got = model(x, ids, ids != 0).word_logits
        feats = model.image_features(x).double()
        w, b = model.word_head.weight.double(), model.word_head.bias.double()
    for i in range(2):
        for v in range(9):
            if pooling == "mean":
                want = sum(feats[i, p] for p in range(feats.shape[1])) / feats.shape[1] @ w[v] + b[v]
            else:
                want = max(float(feats[i, p] @ w[v] + b[v]) for p in range(feats.shape[1]))
            assert float(got[i, v]) == pytest.approx(float(want), abs=1e-5)


def test_max_pooled_word_loss_reaches_only_the_patches_that_score_a_word():
    """With max pooling a word's gradient goes to its best patch alone; with mean pooling to every patch."""
    torch.manual_seed(0)
    for pooling in ("mean", "max"):
        model = tiny_model(pooling=pooling)
        feats = torch.randn(1, 4, 16, requires_grad=True)
        logits = model._word_logits(feats)
        caption_word_loss(logits, torch.tensor([[3]]), torch.ones(9)).backward()
        touched = feats.grad[0].abs().sum(-1) > 0
        if pooling == "mean":
            assert touched.all()
        else:  # each of the 9 words' argmax patch, and nothing else
            best = model.word_head(feats[0]).argmax(0)
            assert set(touched.nonzero().flatten().tolist()) == set(best.tolist())


def test_stage1_loss_adds_lambda_times_the_word_loss_which_trains_the_vision_side_only():
    from spark_vlm.data.images import to_pixel_values
    from spark_vlm.training.config import load_config
    from spark_vlm.training.stage1 import stage1_loss
    from spark_vlm.training.stage1_config import Stage1Config

    torch.manual_seed(0)
    model = tiny_model()
    ids = IDS[:2].clone()
    batch: dict = {"images": torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8), "input_ids": ids,
             "attention_mask": ids != 0}
    idf = caption_word_idf(ids, ids != 0, 9, (0,))
    plain = stage1_loss(load_config(Stage1Config, None, []), model, batch)
    batch["word_ids"] = torch.tensor([[3, 4, 8, -1, -1], [2, 4, 5, 6, 7]])  # 8, 2: words of other captions
    got = stage1_loss(load_config(Stage1Config, None, ["lambda_words=0.5"]), model, batch, word_idf=idf)
    out = model(to_pixel_values(batch["images"]), ids, ids != 0)
    torch.testing.assert_close(got["word_loss"], caption_word_loss(out.word_logits, batch["word_ids"], idf))
    torch.testing.assert_close(got["loss"], plain["loss"] + 0.5 * got["word_loss"])
    assert set(got) == {"loss", "global_loss", "fine_loss", "word_loss"}
    got["word_loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["word_head.weight"].abs().sum() > 0
    assert grads["vision_model.pos_embed"].abs().sum() > 0
    assert all(grads[n] is None for n in grads if n.startswith(("text_", "vision_proj", "vision_head")))


@pytest.mark.parametrize("overrides, message", [
    (["lambda_words=-1"], "lambda_words: must be >= 0"),
    (["lambda_words=1", "data.kind=webdataset", "data.train_path=x", "data.val_path=y"],
     "lambda_words: the caption-word loss needs the training captions"),
    (["model.caption_word_head=true"], "model.caption_word_head"),  # not a key: lambda_words decides
    (["model.word_pooling=median"], "model.word_pooling"),
    (["model.word_pooling=max"], "model.word_pooling: pools the caption-word head, which only lambda_words > 0"),
])
def test_config_refuses_what_it_cannot_do(overrides, message):
    from spark_vlm.training.config import ConfigError, load_config
    from spark_vlm.training.stage1_config import Stage1Config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(Stage1Config, None, overrides)


def test_the_word_head_round_trips_and_is_absent_by_default(tmp_path):
    torch.manual_seed(0)
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    again = SparkModel.from_pretrained(tmp_path).eval()
    x, ids = torch.randn(2, 3, 16, 16), IDS[:2]
    torch.testing.assert_close(again(x, ids, ids != 0).word_logits, model(x, ids, ids != 0).word_logits)
    plain = tiny_model(word_head=False)
    assert plain.word_head is None and plain(x, ids, ids != 0).word_logits is None
    assert json.loads((tmp_path / "config.json").read_text())["caption_word_head"] is True


def test_a_tiny_vision_tower_learns_to_name_the_colour_it_sees():
    """Red images captioned "red square", blue ones "blue square" (ids 3/4 and 5): from the pixels alone the head
    must come to rank the right colour word first; "square", in every caption, carries no information."""
    torch.manual_seed(0)
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    colour = torch.tensor([[1.0, -1, -1], [-1, -1, 1.0]])  # red, blue in [-1, 1] pixel space
    ids = torch.tensor([[3, 5, 0, 0, 0], [4, 5, 0, 0, 0]])
    idf, bags = caption_word_idf(ids, ids != 0, 9, (0,)), bags_of(ids, ids != 0)
    for _ in range(60):
        which = torch.randint(0, 2, (16,))
        pixels = colour[which][:, :, None, None] + 0.3 * torch.randn(16, 3, 16, 16)
        loss = caption_word_loss(model(pixels, ids[which], ids[which] != 0).word_logits, bags[which], idf)
        opt.zero_grad(), loss.backward(), opt.step()
    with torch.no_grad():
        which = torch.arange(2).repeat(8)
        pixels = colour[which][:, :, None, None] + 0.3 * torch.randn(16, 3, 16, 16)
        logits = model(pixels, ids[which], ids[which] != 0).word_logits
    named = torch.where(logits[:, 3] > logits[:, 4], 0, 1)
    assert (named == which).all(), (named, which)


def test_a_tiny_stage1_run_logs_the_word_loss_and_saves_the_head(tmp_path, stage1_here):
    from test_stage1_train import TINY, records

    out = tmp_path / "run"
    proc = stage1_here(TINY + ["lambda_words=1", "train.max_steps=4", f"train.output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r for r in records(out) if r.get("kind") is None]
    assert len(steps) == 4 and all(r["word_loss"] > 0 for r in steps)
    for r in steps:  # the logged total is the SPARK total plus the word loss (lambda 1)
        assert r["loss"] == pytest.approx(0.5 * r["global_loss"] + r["fine_loss"] + r["word_loss"], rel=1e-5)
    model = SparkModel.from_pretrained(out)
    assert model.config.caption_word_head and model.word_head.out_features == model.config.vocab_size

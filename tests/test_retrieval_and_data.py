"""Retrieval recall on hand-built matrices; the cache, the tokenizer, padding and the caption-pair dataset."""
import numpy as np
import pytest
import torch

from spark_vlm.data.cache import build_once, content_key
from spark_vlm.data.images import to_pixel_values
from spark_vlm.data.padding import right_pad
from spark_vlm.data.pairs import CaptionedImages
from spark_vlm.data.tokenizer import CaptionTokenizer, train_sentencepiece
from spark_vlm.metrics.retrieval import retrieval_recall


def test_retrieval_known_ranks():
    # 3 images, 5 texts; texts 0,1 -> image 0, text 2 -> image 1, texts 3,4 -> image 2.
    sim = np.array([
        [0.9, 0.1, 0.8, 0.0, 0.0],   # image 0: its best caption (0.9) ranks 1st -> hit@1
        [0.5, 0.0, 0.4, 0.6, 0.0],   # image 1: its caption (0.4) ranks 3rd (0.5, 0.6 above) -> hit@5 only
        [0.0, 0.0, 0.0, 0.1, 0.7],   # image 2: caption 4 (0.7) ranks 1st
    ])
    t2i = [0, 0, 1, 2, 2]
    r = retrieval_recall(sim, t2i, ks=(1, 2, 5))
    assert r["image_to_text_R@1"] == pytest.approx(200 / 3)
    assert r["image_to_text_R@2"] == pytest.approx(200 / 3)
    assert r["image_to_text_R@5"] == pytest.approx(100)
    # text -> image ranks: t0: col [0.9,.5,0] -> 0; t1: [.1,0,0] -> 0; t2: [.8,.4,0] -> 1;
    # t3: [0,.6,.1] -> image 2 is 2nd -> 1; t4: [0,0,.7] -> 0
    assert r["text_to_image_R@1"] == pytest.approx(60)
    assert r["text_to_image_R@2"] == pytest.approx(100)
    assert r["R@1"] == pytest.approx((200 / 3 + 60) / 2)


def test_retrieval_ties_are_pessimistic():
    r = retrieval_recall(np.ones((2, 2)), [0, 1], ks=(1, 2))
    assert r["text_to_image_R@1"] == 0 and r["text_to_image_R@2"] == 100
    assert r["image_to_text_R@1"] == 0


def test_retrieval_rejects_bad_index():
    with pytest.raises(ValueError):
        retrieval_recall(np.zeros((2, 3)), [0, 1, 5])


CAPTIONS = ["two red circles", "a blue square left of a green star", "one yellow ring", "three small crosses",
            "a large purple hexagon above a white diamond"] * 20


def test_cache_builds_once_and_keeps_the_first_published_entry(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        tmp.mkdir()
        (tmp / "x.txt").write_text("mine")

    entry = build_once(tmp_path / "a" / "entry", build)
    assert (entry / "x.txt").read_text() == "mine" and build_once(entry, build) == entry and len(calls) == 1
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["entry"]  # nothing left aside

    def racing(tmp):  # another process publishes the same entry while this one builds
        (tmp_path / "b").mkdir(exist_ok=True)
        (tmp_path / "b" / "entry").mkdir()
        (tmp_path / "b" / "entry" / "x.txt").write_text("theirs")
        build(tmp)

    entry = build_once(tmp_path / "b" / "entry", racing)
    assert (entry / "x.txt").read_text() == "theirs" and sorted(p.name for p in entry.parent.iterdir()) == ["entry"]
    assert content_key({"a": 1}, ["x"]) != content_key({"a": 1}, ["y"]) != content_key({"a": 2}, ["y"])
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})


def test_right_pad():
    ids, mask = right_pad([[5, 6, 7], [1], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [1, 0, 0], [0, 0, 0]] and ids.dtype == torch.long
    assert mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    assert right_pad([[4]], pad_id=9, length=3)[0].tolist() == [[4, 9, 9]]


def test_sentencepiece_training_is_cached_and_round_trips(tmp_path):
    tok = train_sentencepiece(CAPTIONS, vocab_size=200, cache_dir=tmp_path)
    again = train_sentencepiece(CAPTIONS, vocab_size=200, cache_dir=tmp_path)
    assert again.source == tok.source and len(list(tmp_path.glob("*.model"))) == 1
    other = train_sentencepiece(CAPTIONS + ["a new caption"], vocab_size=200, cache_dir=tmp_path)
    assert other.source != tok.source  # the corpus is part of the key
    assert tok.decode(tok.encode("two red circles")) == "two red circles"
    enc = tok(["two red circles", ""], max_len=6)
    assert enc["input_ids"].shape == (2, 6) and enc["attention_mask"].dtype == torch.bool
    assert enc["attention_mask"][0].sum() == len(tok.encode("two red circles"))
    assert not enc["attention_mask"][1].any() and (enc["input_ids"][1] == tok.pad_id).all()
    tok.save(tmp_path / "run")
    loaded = CaptionTokenizer.load(tmp_path / "run")
    assert loaded.encode("a blue square") == tok.encode("a blue square")
    with pytest.raises(FileNotFoundError):
        CaptionTokenizer.load(tmp_path / "nope")


def test_captioned_images_choose_captions_reproducibly(tmp_path):
    tok = train_sentencepiece(CAPTIONS, vocab_size=200, cache_dir=tmp_path)
    images = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    caps = [["two red circles", "one yellow ring"], ["three small crosses"], ["a blue square left of a green star"] * 2,
            ["one yellow ring", "two red circles", "three small crosses"]]
    ds = CaptionedImages(images, caps, [10, 11, 12, 13], tok, max_len=12, seed=3)
    assert len(ds) == 4 and ds.caption_image.tolist() == [0, 0, 1, 2, 2, 3, 3, 3]
    chosen = {}
    for e in range(6):
        ds.set_epoch(e)
        chosen[e] = [ds.caption_index(i) for i in range(4)]
    for e in reversed(range(6)):
        ds.set_epoch(e)
        assert [ds.caption_index(i) for i in range(4)] == chosen[e]  # reproducible
        assert all(ds.caption_image[j] == i for i, j in enumerate(chosen[e]))  # an own caption
    assert len({tuple(v) for v in chosen.values()}) > 1  # and it varies across epochs
    item = ds[0]
    assert item["images"].dtype == torch.uint8 and item["input_ids"].shape == (12,)
    px = to_pixel_values(torch.stack([ds[i]["images"] for i in range(4)]))
    assert px.shape == (4, 3, 8, 8) and px.min() >= -1 and px.max() <= 1
    with pytest.raises(ValueError, match="at least one caption"):
        CaptionedImages(images[:1], [[]], [1], tok, max_len=4)

"""benchmarks/question_routing.py: the reading-comprehension texts answer from their own caption, and the probe's
answer-position spread is exactly zero before the first layer (the same "Answer:" token for every shape)."""

import importlib.util
import re
from pathlib import Path

import pytest

from spark_vlm.data.scene_vocab import PLURALS, SHAPES, WORD_TO_SHAPE
from spark_vlm.data.scenes import cached_scenes

spec = importlib.util.spec_from_file_location(
    "question_routing", Path(__file__).resolve().parents[1] / "benchmarks" / "question_routing.py")
question_routing = importlib.util.module_from_spec(spec)
spec.loader.exec_module(question_routing)

WORDS = {**WORD_TO_SHAPE, **{PLURALS[w]: s for w, s in WORD_TO_SHAPE.items()}}  # an independent reading of a caption
SHAPE_WORD = re.compile(r"\b(" + "|".join(sorted(WORDS, key=len, reverse=True)) + r")\b")
QA = re.compile(r"Question: Is there an? (\w+) in the image\? Answer: (yes|no)")


def test_reading_texts_are_answered_by_their_caption(tmp_path):
    scenes = cached_scenes("val", 12, 32, cache_dir=str(tmp_path))
    enumerations = {c for i in range(len(scenes)) for c, kind in
                    zip(scenes.meta(i)["captions"], scenes.meta(i)["caption_kinds"]) if kind == "enumeration"}
    texts = question_routing.reading_texts(scenes, per_caption=3, per_text=2, seed=0)
    assert texts == question_routing.reading_texts(scenes, per_caption=3, per_text=2, seed=0)  # seeded
    assert len(texts) == 3 * len(enumerations)
    answers = []
    for text in texts:
        caption = text.split(" Question:")[0]
        assert caption in enumerations
        named = {WORDS[w] for w in SHAPE_WORD.findall(caption)}
        pairs = QA.findall(text)
        assert 1 <= len(pairs) <= 2
        for shape, answer in pairs:
            assert shape in SHAPES and (shape in named) == (answer == "yes")
            answers.append(answer)
    assert {"yes", "no"} <= set(answers)


@pytest.mark.slow  # trains a 1-layer stand-in for a few steps
def test_probe_reports_zero_spread_before_the_first_layer(tmp_path):
    from spark_vlm.training.standin_lm import StandinLM, pretrain_standin_lm

    scenes = cached_scenes("val", 40, 32, cache_dir=str(tmp_path))
    texts = [c for i in range(len(scenes)) for c in scenes.meta(i)["captions"]]
    texts += question_routing.reading_texts(scenes, 2, 1, seed=0)
    lm = pretrain_standin_lm(texts, texts[:4], tmp_path, StandinLM(width=32, layers=1, heads=2, steps=3, vocab_size=1000))
    result = question_routing.probe(str(lm), question_routing.reading_texts(scenes, 1, 1, seed=1))
    spread = result["spread_percent_per_layer"]
    from transformers import AutoTokenizer

    from spark_vlm.data.text import object_question, question_answer

    tok = AutoTokenizer.from_pretrained(lm)
    lengths = {len(tok(question_answer(object_question(s)))["input_ids"]) for s in SHAPES}
    # embeddings of the same last token at the same position: no spread, unless a shape name splits into pieces
    assert len(spread) == 2 and (spread[0] < 1e-3) == (len(lengths) == 1) and spread[1] > 0.01
    assert 0 <= result["text_qa_accuracy"] <= 100 and set(result["p_yes_without_caption"]) == set(SHAPES)

"""POPE answered from caption likelihoods (`--answer statement`): the batched score table against a one-sequence-at-a-
time loop, the PMI decision on a hand-worked table, and reading the object out of POPE's question text."""

import math
import re

import pytest
import torch

from spark_vlm.data.prompts import FlamingoPrompts
from spark_vlm.evaluation.pope import QUESTION_OBJECT
from spark_vlm.evaluation.pope_statements import (STATEMENT_TEMPLATES, answer_by_statements, resolve_templates,
                                                  statement, statement_answers, statement_scores)
from spark_vlm.data.images import to_pixel_values
from test_flamingo import make_model, set_gates

TEMPLATES = ("a {object}", "a red {object}", "two blue {object}s")
OBJECTS = ["circle", "square", "star"]


def raw_images(n: int, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return list(torch.randint(0, 256, (n, 16, 16, 3), dtype=torch.uint8, generator=g).numpy())


@torch.no_grad()
def slow_score(model, prompts, image, obj) -> float:
    """log sum_t p(statement_t | image), one unpadded sequence at a time, token by token."""
    logps = []
    for t in TEMPLATES:
        ids = torch.tensor([prompts.chunk_ids(t.format(object=obj), closed=False)])
        px = to_pixel_values(torch.as_tensor(image)[None])[:, None]
        logits = model(px, ids).logits[0].log_softmax(-1)
        logps.append(sum(logits[k - 1, ids[0, k]].item() for k in range(1, ids.shape[1])))
    return math.log(sum(math.exp(x) for x in logps))


def model_and_prompts():
    model = make_model()
    set_gates(model, 1.0)  # open gates: the image changes every score
    return model, FlamingoPrompts(model.tokenizer)


def test_batched_scores_match_the_slow_loop_and_do_not_depend_on_batching():
    model, prompts = model_and_prompts()
    images = raw_images(3)
    table = statement_scores(model, prompts, images, OBJECTS, TEMPLATES, batch_size=4)
    assert table.shape == (3, 3)
    slow = torch.tensor([[slow_score(model, prompts, im, o) for o in OBJECTS] for im in images])
    torch.testing.assert_close(table, slow, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(statement_scores(model, prompts, images, OBJECTS, TEMPLATES, batch_size=100), table)
    assert not torch.allclose(table[0], table[1])  # the image matters (gates open)


def test_pmi_decision_on_a_hand_worked_table():
    # object 0: image 0 makes it 4x likelier than image 1 -> mean p = 2.5 p1: yes for image 0 only.
    # object 1: the same score for every image: never above its own mean -> "no" everywhere.
    scores = torch.log(torch.tensor([[4.0, 1.0], [1.0, 1.0]]))
    assert statement_answers(scores).tolist() == [[True, False], [False, False]]
    questions = [{"image_id": "b", "object": "star"}, {"image_id": "a", "object": "star"},
                 {"image_id": "a", "object": "ring"}]
    model, prompts = model_and_prompts()
    images = dict(zip("ab", raw_images(2)))
    answers = answer_by_statements(model, prompts, questions, images, ("a {object}",))
    table = statement_scores(model, prompts, [images["a"], images["b"]], ["ring", "star"], ("a {object}",))
    # two images: exactly one of them is above the mean for each object (unless tied)
    assert answers[0] != answers[1] and answers[1] == ("yes" if table[0, 1] > table[1, 1] else "no")


def test_statements_take_the_article_the_object_needs():
    assert statement("a {object}", "apple") == "an apple"
    assert statement("a photo of a {object}", "ox") == "a photo of an ox"
    assert statement("a red {object}", "apple") == "a red apple" and statement("A {object}", "egg") == "An egg"
    assert statement("two {object}s", "umbrella") == "two umbrellas" and statement("a {object}", "dog") == "a dog"


def test_scene_templates_name_a_colour_and_the_object_is_read_from_pope_questions():
    assert STATEMENT_TEMPLATES["scenes"][0] == "a red {object}" and len(STATEMENT_TEMPLATES["scenes"]) >= 8
    assert QUESTION_OBJECT.match("Is there a traffic light in the image?").group(1) == "traffic light"
    assert QUESTION_OBJECT.match("Is there an orange in the imange?").group(1) == "orange"
    assert QUESTION_OBJECT.match("How many dogs are there?") is None


def test_templates_are_presets_or_the_users_own_and_bad_ones_are_refused_before_loading(tmp_path):
    from spark_vlm.evaluation.pope import pope_report

    assert resolve_templates("plain") == ("a {object}",)
    assert resolve_templates(["a photo of a {object}", "plain"]) == ("a photo of a {object}", "a {object}")
    assert resolve_templates(["scenes"]) == STATEMENT_TEMPLATES["scenes"]
    for bad in ("colours", "a {thing}", "{object} and {object}", "a {object} {", "{0} {object}"):
        with pytest.raises(ValueError, match=re.escape(f"--statements {bad!r}: neither a preset")):
            resolve_templates(["plain", bad])
    with pytest.raises(ValueError, match="needs a preset"):
        resolve_templates([])
    with pytest.raises(ValueError, match="--statements 'colours'"):  # before the checkpoint is even looked at
        pope_report(tmp_path, str(tmp_path), question_files=["q.json"], answer="statement", statements="colours")
    (tmp_path / "q.json").write_text('{"image": "a.jpg", "text": "How many dogs are there?", "label": "yes"}\n')
    with pytest.raises(ValueError, match="cannot read it from 'How many dogs are there\\?'"):  # no checkpoint needed
        pope_report(tmp_path, str(tmp_path), question_files=[str(tmp_path / "q.json")], answer="statement")


def test_a_filled_cache_answers_without_the_model_and_changes_nothing():
    model, prompts = model_and_prompts()
    images = dict(zip("abc", raw_images(3)))
    questions = [{"image_id": i, "object": o} for i in "abc" for o in ("star", "ring")]
    cache = {}
    first = answer_by_statements(model, prompts, questions, images, TEMPLATES, cache=cache)
    assert first == answer_by_statements(model, prompts, questions, images, TEMPLATES)
    assert len(cache) == 6
    assert answer_by_statements(None, prompts, questions[::-1], images, TEMPLATES, cache=cache) == first[::-1]

"""POPE question sampling (random / popular / adversarial), scoring and few-shot examples on hand-built fixtures."""

from collections import Counter

import pytest

from spark_vlm.data.text import object_question
from spark_vlm.evaluation.pope import choose_shots, qa_text
from spark_vlm.metrics.pope import object_statistics, parse_yes_no, pope_scores, sample_pope_questions

# Frequencies (images containing the object): person 4, dog 3, car / cat / couch 2,
# frisbee / bus / traffic light 1, elephant / giraffe / pizza 0.
GT = {
    "A": {"person", "dog", "frisbee"},
    "B": {"person", "car", "bus"},
    "C": {"person", "car", "traffic light"},
    "D": {"dog", "cat", "couch"},
    "E": {"person", "dog", "couch"},
    "F": {"cat"},  # fewer than num_pos=3 objects: skipped, as in the reference
}
CATEGORIES = sorted({o for objs in GT.values() for o in objs} | {"elephant", "giraffe", "pizza"})


def negatives(questions, image_id):
    return [q["object"] for q in questions if q["image_id"] == image_id and q["label"] == "no"]


def test_statistics():
    frequency, cooccurrence = object_statistics(GT)
    assert frequency["person"] == 4 and frequency["dog"] == 3 and frequency["elephant"] == 0
    assert cooccurrence["dog"] == Counter({"person": 2, "couch": 2, "frisbee": 1, "cat": 1})


@pytest.mark.parametrize("setting", ["random", "popular", "adversarial"])
def test_balanced_never_asks_present_object_as_negative(setting):
    for seed in range(10):
        questions = sample_pope_questions(GT, CATEGORIES, setting, seed=seed)
        assert {q["image_id"] for q in questions} == {"A", "B", "C", "D", "E"}  # F skipped
        for q in questions:
            assert (q["object"] in GT[q["image_id"]]) == (q["label"] == "yes")
        for image_id in "ABCDE":
            labels = [q["label"] for q in questions if q["image_id"] == image_id]
            assert labels == ["yes", "no"] * 3  # interleaved like the reference
            assert len(set(q["object"] for q in questions if q["image_id"] == image_id)) == 6


def test_deterministic_by_seed():
    for setting in ("random", "popular", "adversarial"):
        assert sample_pope_questions(GT, CATEGORIES, setting, seed=3) == \
            sample_pope_questions(GT, CATEGORIES, setting, seed=3)
    runs = [sample_pope_questions(GT, CATEGORIES, "random", seed=s) for s in range(5)]
    assert any(run != runs[0] for run in runs[1:])  # the seed does matter


def test_popular_takes_most_frequent_absent_objects():
    questions = sample_pope_questions(GT, CATEGORIES, "popular")
    # A lacks car / cat / couch (2 each; ties broken by name), then bus / traffic light (1)
    assert negatives(questions, "A") == ["car", "cat", "couch"]
    # D lacks person (4), car (2), then bus / frisbee / traffic light (1): bus by name
    assert negatives(questions, "D") == ["person", "car", "bus"]


def test_adversarial_takes_most_co_occurring_absent_objects():
    questions = sample_pope_questions(GT, CATEGORIES, "adversarial")
    # A = {person, dog, frisbee}. Co-occurrence summed over them:
    # couch = 1 (person, in E) + 2 (dog, in D and E) = 3; car = 2 (person, in B and C);
    # bus = 1, cat = 1 (dog, in D), traffic light = 1 -> tie, broken by frequency: cat (2).
    assert negatives(questions, "A") == ["couch", "car", "cat"]
    # D = {dog, cat, couch}: person = 2 (dog: A, E) + 1 (couch: E) = 3, frisbee = 1 (dog: A),
    # then nothing co-occurs: car wins on frequency (2).
    assert negatives(questions, "D") == ["person", "frisbee", "car"]


def test_question_text_and_errors():
    questions = sample_pope_questions({"x": {"apple", "dog"}}, ["apple", "dog", "elephant", "cat"],
                                      "popular", num_pos=2, num_neg=2)
    texts = {q["object"]: q["question"] for q in questions}
    assert texts["dog"] == "Is there a dog in the image?"
    assert texts["elephant"] == "Is there an elephant in the image?"
    with pytest.raises(ValueError, match="setting"):
        sample_pope_questions(GT, CATEGORIES, "hard")
    with pytest.raises(ValueError, match="not in all_categories"):
        sample_pope_questions(GT, ["person"], "random")


def test_pope_scores_hand_computed():
    labels = ["yes", "yes", "yes", "no", "no", "no", "no", "no"]
    answers = ["yes", "yes", "no", "yes", "no", "no", "no", "YES "]
    # TP = 2 (q1, q2), FN = 1 (q3), FP = 2 (q4, q8), TN = 3 (q5-q7)
    scores = pope_scores([{"label": label} for label in labels], answers)
    assert scores["n"] == 8
    assert scores["accuracy"] == pytest.approx(100 * 5 / 8)
    assert scores["precision"] == pytest.approx(50.0)
    assert scores["recall"] == pytest.approx(100 * 2 / 3)
    assert scores["f1"] == pytest.approx(100 * 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert scores["yes_ratio"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="answer #0"):
        pope_scores([{"label": "yes"}], ["maybe"])
    with pytest.raises(ValueError, match="1 questions but 2 answers"):
        pope_scores([{"label": "yes"}], ["yes", "no"])


def test_parse_yes_no_follows_reference_rule():
    assert parse_yes_no("Yes, there is a dog in the image.") == "yes"
    assert parse_yes_no("No, there is not.") == "no"
    assert parse_yes_no("There is no dog in the image.") == "no"
    assert parse_yes_no("Yes. There is no cat, though.") == "yes"  # only the first sentence counts


def test_few_shot_examples_come_from_other_images_and_are_true():
    questions = sample_pope_questions(GT, CATEGORIES, "random", seed=0)
    shots = choose_shots(questions, GT, CATEGORIES, shots=4, seed=0)
    assert len(shots) == len(questions) and shots == choose_shots(questions, GT, CATEGORIES, shots=4, seed=0)
    for q, examples in zip(questions, shots):
        assert [a for _, _, a in examples] == ["yes", "no", "yes", "no"]
        for image_id, text, answer in examples:
            assert image_id != q["image_id"]
            obj = next(c for c in CATEGORIES if text == object_question(c))
            assert (obj in GT[image_id]) == (answer == "yes")
    assert qa_text("Is there a dog in the image?", "yes") == \
        "<image>Question: Is there a dog in the image? Answer: yes<|endofchunk|>"
    assert qa_text("Is there a dog in the image?", None).endswith("Answer:")

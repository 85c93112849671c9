"""POPE: image draw and question sampling as the reference (AoiDragon/POPE utils.py) does it, on hand-worked
fixtures; scoring; answer parsing; POPE's question files; few-shot examples; the CLI's one-line errors."""

import contextlib
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from spark_vlm.data.prompts import END_OF_CHUNK, IMAGE_TOKEN, FlamingoPrompts
from spark_vlm.data.text import object_question, question_answer
from spark_vlm.evaluation.pope import choose_shots, instance_questions, qa_ids, read_pope_questions
from spark_vlm.models.flamingo import add_flamingo_tokens
from test_flamingo import make_tokenizer
from spark_vlm.metrics.pope import (object_statistics, parse_yes_no, pope_scores, sample_pope_questions,
                                    select_pope_images)

REPO = Path(__file__).resolve().parents[1]

# Objects in annotation order. Frequency over A-E, first-seen order: person 4, dog 3, frisbee 1, car 2, bus 1,
# traffic light 1, cat 1, couch 2 -> by frequency (ties keep first-seen order):
# person, dog, car, couch, frisbee, bus, traffic light, cat.
GT = {
    "A": ["person", "dog", "frisbee"],
    "B": ["person", "car", "bus"],
    "C": ["person", "car", "traffic light"],
    "D": ["dog", "cat", "couch"],
    "E": ["person", "dog", "couch"],
    "F": ["cat"],  # fewer than 3 objects: never drawn, as in the reference
}
DRAWN = {k: v for k, v in GT.items() if k != "F"}  # in this order, so that ties are hand-traceable


def asked(questions, image_id, label):
    return [q["object"] for q in questions if q["image_id"] == image_id and q["label"] == label]


def test_select_pope_images():
    drawn = select_pope_images(GT, num_images=500, seed=0)
    assert sorted(drawn) == list("ABCDE") and drawn["A"] == GT["A"]  # fewer than 500: all eligible ones
    assert select_pope_images(GT, 500, seed=0) == drawn
    two = select_pope_images(GT, num_images=2, seed=1)
    assert len(two) == 2 and set(two) <= set("ABCDE")
    assert select_pope_images({"x": ["dog", "dog", "cat", "person"]}, 1) == {"x": ["dog", "cat", "person"]}
    with pytest.raises(ValueError, match="at least 3 different objects"):
        select_pope_images({"x": ["dog", "dog", "cat"]})


def test_statistics_in_first_seen_order():
    frequency, cooccurrence = object_statistics(DRAWN)
    assert list(frequency) == ["person", "dog", "frisbee", "car", "bus", "traffic light", "cat", "couch"]
    assert frequency["person"] == 4 and frequency["couch"] == 2
    assert cooccurrence["dog"] == Counter({"person": 2, "couch": 2, "frisbee": 1, "cat": 1})
    assert list(cooccurrence["couch"]) == ["dog", "cat", "person"]


@pytest.mark.parametrize("setting", ["random", "popular", "adversarial"])
def test_same_positives_in_every_setting_and_interleaved(setting):
    for seed in range(5):
        questions = sample_pope_questions(DRAWN, setting, seed=seed)
        for image_id, objects in DRAWN.items():
            assert asked(questions, image_id, "yes") == objects[:3]  # the first three, whatever the setting
            labels = [q["label"] for q in questions if q["image_id"] == image_id]
            assert labels == ["yes", "no"] * 3
            negatives = asked(questions, image_id, "no")
            assert len(set(negatives)) == 3 and not set(negatives) & set(objects)
        assert questions == sample_pope_questions(DRAWN, setting, seed=seed)


def test_popular_takes_the_most_frequent_free_object_per_positive():
    questions = sample_pope_questions(DRAWN, "popular")
    # A lacks car (2), couch (2, seen after car), then frisbee is present -> bus (1, seen before traffic light)
    assert asked(questions, "A", "no") == ["car", "couch", "bus"]
    # D: person (4), car (2), frisbee (1, first seen of the 1s)
    assert asked(questions, "D", "no") == ["person", "car", "frisbee"]
    assert asked(questions, "E", "no") == ["car", "frisbee", "bus"]


def test_adversarial_walks_each_positives_cooccurrence_list():
    questions = sample_pope_questions(DRAWN, "adversarial")
    # E = person, dog, couch. person's list: dog 2, car 2, frisbee, bus, traffic light, couch -> car;
    # dog's: person 2, couch 2, frisbee 1, cat 1 -> frisbee; couch's: dog 2, cat 1, person 1 -> cat.
    assert asked(questions, "E", "no") == ["car", "frisbee", "cat"]
    # A = person, dog, frisbee: person -> car, dog -> couch; frisbee's list (person, dog) is exhausted:
    # a random free object, as in the reference
    negatives = asked(questions, "A", "no")
    assert negatives[:2] == ["car", "couch"] and negatives[2] in {"bus", "traffic light", "cat"}
    # summing co-occurrence over all positives (the old behaviour) would give A: couch, car, ... in another order


def test_sampling_fails_instead_of_hanging():
    same = {"x": ["a", "b", "c"], "y": ["a", "b", "c"]}  # nothing absent to ask about
    for setting in ("random", "popular", "adversarial"):
        with pytest.raises(ValueError, match="no absent object is left"):
            sample_pope_questions(same, setting)
    with pytest.raises(ValueError, match="setting"):
        sample_pope_questions(DRAWN, "hard")


def test_question_text():
    questions = sample_pope_questions({"x": ["apple", "dog", "cat"], "y": ["elephant", "cow", "bird"]}, "popular")
    texts = {q["object"]: q["question"] for q in questions}
    assert texts["dog"] == "Is there a dog in the image?"
    assert texts["elephant"] == "Is there an elephant in the image?"


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
    assert parse_yes_no(" no") == "no" and parse_yes_no("nope") == "yes"  # whole words only, as the reference


def test_few_shot_examples_come_from_other_images_and_are_true():
    questions = sample_pope_questions(DRAWN, "random", seed=0)
    shots = choose_shots(questions, shots=4, seed=0)
    assert len(shots) == len(questions) and shots == choose_shots(questions, shots=4, seed=0)
    truth = {(q["image_id"], q["question"]): q["label"] for q in questions}
    for q, examples in zip(questions, shots):
        assert [a for _, _, a in examples] == ["yes", "no", "yes", "no"]
        for image_id, text, answer in examples:
            assert image_id != q["image_id"] and truth[image_id, text] == answer


def test_probe_chunks_are_tokenised_exactly_as_the_training_text():
    """`data.object_questions` trains on these chunks: the probe must give the model the very same token ids."""
    tokenizer = make_tokenizer()
    add_flamingo_tokens(tokenizer, (IMAGE_TOKEN, END_OF_CHUNK), len(tokenizer))
    prompts = FlamingoPrompts(tokenizer)
    question = object_question("dog")
    training = prompts([question_answer(question, "yes")], 64)
    trained_row = training["input_ids"][0][training["attention_mask"][0].bool()].tolist()
    assert qa_ids(prompts, question, "yes") == trained_row
    query = qa_ids(prompts, question, None)
    assert query == trained_row[:len(query)] and tokenizer.decode(query[1:]).strip().endswith("Answer:")
    assert trained_row[len(query):] == tokenizer(" yes", add_special_tokens=False)["input_ids"] + [prompts.end_id]


def test_few_shot_examples_fail_instead_of_hanging():
    one_image = [q for q in sample_pope_questions(DRAWN, "random") if q["image_id"] == "A"]
    with pytest.raises(ValueError, match="no other image has a 'yes' question"):
        choose_shots(one_image, shots=2, seed=0)
    assert choose_shots(one_image, shots=0, seed=0) == [[]] * len(one_image)


# The first lines of POPE's output/coco/coco_pope_adversarial.json (AoiDragon/POPE), verbatim.
OFFICIAL = """\
{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?", "label": "yes"}
{"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a backpack in the image?", "label": "no"}
"""


def test_read_official_question_files(tmp_path):
    path = tmp_path / "coco_pope_adversarial.json"
    path.write_text(OFFICIAL + "\n")
    assert read_pope_questions(path) == [
        {"image_id": "COCO_val2014_000000310196.jpg", "question": "Is there a snowboard in the image?", "label": "yes",
         "object": "snowboard"},
        {"image_id": "COCO_val2014_000000310196.jpg", "question": "Is there a backpack in the image?", "label": "no",
         "object": "backpack"}]
    for content, message in [('{"image": "a.jpg", "text": "?", "label": "maybe"}', "line 1 has label 'maybe'"),
                             ('{"image": "a.jpg", "label": "yes"}', "line 1 needs a string 'image' and 'text'"),
                             ("[1, 2]", "line 1 needs"), ("{oops", "line 1 is not valid JSON"), ("", "holds no questions")]:
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            read_pope_questions(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_pope_questions(path)


def test_instance_questions_use_annotation_order(tmp_path):
    coco = {"images": [{"id": i, "file_name": f"{i}.png"} for i in (1, 2, 3, 4)],
            "categories": [{"id": c, "name": n} for c, n in enumerate(["dog", "cat", "car", "bus", "cow", "horse"])],
            "annotations": [{"image_id": 1, "category_id": c} for c in (2, 0, 0, 1)]
                           + [{"image_id": 2, "category_id": c} for c in (3, 4, 1)]
                           + [{"image_id": 3, "category_id": c} for c in (5, 0, 4)]
                           + [{"image_id": 4, "category_id": 0}]}
    (tmp_path / "i.json").write_text(json.dumps(coco))
    by_setting, files = instance_questions(str(tmp_path / "i.json"), ["popular"], num_images=500, seed=0)
    assert files == {i: f"{i}.png" for i in (1, 2, 3)}  # image 4 has one object
    assert asked(by_setting["popular"], 1, "yes") == ["car", "dog", "cat"]
    del coco["annotations"][0]["category_id"]
    (tmp_path / "i.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"annotations\[0\] has no 'category_id'"):
        instance_questions(str(tmp_path / "i.json"), ["popular"], 500, 0)


@pytest.mark.slow  # a CLI subprocess
def test_cli_bad_inputs_give_one_line(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "q.json").write_text(OFFICIAL)
    (tmp_path / "list.json").write_text("[]")
    base = [sys.executable, str(REPO / "eval" / "pope.py"), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o.json")]
    cases = [(["--questions", str(tmp_path / "q.json"), "--image-dir", str(tmp_path / "nope")], "is not a directory"),
             (["--instances", str(tmp_path / "list.json"), "--image-dir", str(tmp_path / "imgs")], "'images' list"),
             (["--questions", str(tmp_path / "q.json"), "--image-dir", str(tmp_path / "imgs")], "not a stage-2 run")]
    # The first case as a real program; the others in-process (the same main(), without ~7 s of imports each).
    proc = subprocess.run(base + cases[0][0], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and cases[0][1] in proc.stderr, proc.stderr
    from test_cli_fuzz import cli

    pope_cli = cli("pope")
    for args, message in cases[1:]:
        err = io.StringIO()
        with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(err):
            pope_cli.main(base[2:] + args)
        assert exit_info.value.code == 2
        assert len(err.getvalue().strip().splitlines()) == 1 and message in err.getvalue(), err.getvalue()

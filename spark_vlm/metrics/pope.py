"""POPE (Li et al., "Evaluating Object Hallucination in Large Vision-Language Models", EMNLP 2023):
balanced yes/no questions "Is there a <object> in the image?" and their scores.

Only the model-free parts live here: sampling the questions from ground-truth objects, turning a
free-form answer into yes/no, and scoring. The three settings differ only in the negatives:

* random:      absent categories drawn uniformly at random;
* popular:     the absent categories that are most frequent over the whole dataset;
* adversarial: the absent categories that co-occur most often with the image's present objects.

Compared with the reference (AoiDragon/POPE ``utils.py``): positives are a seeded random sample of
the present objects (the reference takes the first ones of an ordered list, which a set does not
have), adversarial scores a candidate by its co-occurrence summed over all present objects (the
reference walks the co-occurrence list of one positive at a time), ties are broken by dataset
frequency then name, and everything is deterministic given ``seed``. As in the reference, images
with fewer present objects than ``num_pos`` are skipped, and each image's questions alternate
positive, negative, positive, ...
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Hashable, Iterable, Mapping, Sequence

from ..data.text import object_question

SETTINGS = ("random", "popular", "adversarial")


def object_statistics(gt_objects: Mapping[Hashable, set[str]]) -> tuple[Counter, dict[str, Counter]]:
    """(frequency, co-occurrence) over the dataset: images containing c / containing both a, b."""
    frequency: Counter = Counter()
    cooccurrence: dict[str, Counter] = {}
    for present in gt_objects.values():
        frequency.update(present)
        for a in present:
            row = cooccurrence.setdefault(a, Counter())
            row.update(b for b in present if b != a)
    return frequency, cooccurrence


def sample_pope_questions(gt_objects: Mapping[Hashable, set[str]],
                          all_categories: Iterable[str],
                          setting: str = "random",
                          num_pos: int = 3,
                          num_neg: int = 3,
                          seed: int = 0) -> list[dict]:
    """Sample POPE questions; returns ``[{"image_id", "object", "label", "question"}]``.

    Args:
        gt_objects: ``{image_id: {category, ...}}`` objects present in each image. Dataset-wide
            frequency and co-occurrence (for popular / adversarial) are computed from it.
        all_categories: every category that may be asked about (negatives come from these).
        setting: "random", "popular" or "adversarial".
        num_pos / num_neg: "yes" / "no" questions per image. Images with fewer than ``num_pos``
            present objects or fewer than ``num_neg`` absent categories are skipped.
        seed: same inputs and seed give the same questions.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown POPE setting {setting!r}; choose from {list(SETTINGS)}")
    if num_pos < 0 or num_neg < 0:
        raise ValueError("num_pos and num_neg must be non-negative")
    categories = sorted(set(all_categories))
    known = set(categories)
    for image_id, present in gt_objects.items():
        unknown = sorted(set(present) - known)
        if unknown:
            raise ValueError(f"image {image_id!r} has objects not in all_categories: {unknown}")

    frequency, cooccurrence = object_statistics(gt_objects)
    rng = random.Random(seed)
    questions: list[dict] = []
    for image_id, present in gt_objects.items():
        present_sorted = sorted(present)  # sets have no stable order across runs; sort first
        absent = [c for c in categories if c not in present]
        if len(present_sorted) < num_pos or len(absent) < num_neg:
            continue
        positives = rng.sample(present_sorted, num_pos)
        if setting == "random":
            negatives = rng.sample(absent, num_neg)
        elif setting == "popular":
            negatives = sorted(absent, key=lambda c: (-frequency[c], c))[:num_neg]
        else:  # adversarial
            def together(c: str) -> int:
                return sum(cooccurrence.get(p, Counter())[c] for p in present_sorted)
            negatives = sorted(absent, key=lambda c: (-together(c), -frequency[c], c))[:num_neg]

        pairs = [(obj, "yes") for obj in positives]
        pairs_neg = [(obj, "no") for obj in negatives]
        # Interleave yes/no like the reference; leftovers (num_pos != num_neg) go at the end.
        ordered = [q for pair in zip(pairs, pairs_neg) for q in pair]
        ordered += pairs[len(pairs_neg):] + pairs_neg[len(pairs):]
        for obj, label in ordered:
            questions.append({"image_id": image_id, "object": obj, "label": label,
                              "question": object_question(obj)})
    return questions


def parse_yes_no(answer: str) -> str:
    """Free-form answer -> "yes"/"no" with the reference's rule (POPE ``evaluate.py``).

    Keep the first sentence; it is "no" if it contains the word "no" or "not", otherwise "yes".
    """
    text = answer.split(".")[0].replace(",", "")
    words = text.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_scores(questions: Sequence[Mapping[str, str]], answers: Sequence[str]) -> dict:
    """Accuracy, precision, recall, F1 (positive class "yes") and yes-ratio, all in %.

    ``answers[i]`` ("yes"/"no", case and surrounding spaces ignored) answers ``questions[i]``.
    A metric whose denominator is zero (e.g. precision with no "yes" answer) is 0.
    """
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    if not questions:
        raise ValueError("no questions to score")
    tp = fp = tn = fn = 0
    for i, (q, a) in enumerate(zip(questions, answers)):
        pred = a.strip().lower() if isinstance(a, str) else a
        if pred not in ("yes", "no"):
            raise ValueError(f"answer #{i} is {a!r}; expected 'yes' or 'no' (see parse_yes_no)")
        if q["label"] not in ("yes", "no"):
            raise ValueError(f"question #{i} has label {q['label']!r}; expected 'yes' or 'no'")
        if pred == "yes":
            tp, fp = (tp + 1, fp) if q["label"] == "yes" else (tp, fp + 1)
        else:
            tn, fn = (tn + 1, fn) if q["label"] == "no" else (tn, fn + 1)
    n = len(questions)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": 100.0 * (tp + tn) / n, "precision": 100.0 * precision,
            "recall": 100.0 * recall, "f1": 100.0 * f1, "yes_ratio": 100.0 * (tp + fp) / n, "n": n}

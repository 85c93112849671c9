"""POPE (Li et al., "Evaluating Object Hallucination in Large Vision-Language Models", EMNLP 2023):
balanced yes/no questions "Is there a <object> in the image?" and their scores.

Only the model-free parts live here: drawing the images, sampling the questions from their ground-truth objects,
turning a free-form answer into yes/no, and scoring. As the reference (AoiDragon/POPE ``main.py``/``utils.py``):

1. keep the images with at least ``num_pos`` (3) objects and draw ``num_images`` (500) of them;
2. count object frequency and co-occurrence over the drawn images only; the objects that can be asked about
   are those present in at least one drawn image;
3. per image, its first ``num_pos`` objects (annotation order) are the positives, the same in all three settings;
   each positive is followed by one negative, an object absent from the image and not asked yet:
   * random:      drawn uniformly;
   * popular:     the most frequent one;
   * adversarial: the one co-occurring most often with *this* positive;
   when popular / adversarial find none, a random one, as in the reference.
   Ties keep first-seen order (the reference sorts dicts in insertion order, stably).

Deviations: everything is seeded (the reference uses Python's global random); fewer eligible images than
``num_images`` means all of them are used (the reference asserts); an image with no absent object left raises
a ValueError (the reference loops forever); the question text has the right article (the reference's template
``.replace("a", "an")`` also turns "image" into "imange").
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Hashable, Mapping, Sequence

from ..data.text import object_question

SETTINGS = ("random", "popular", "adversarial")


def select_pope_images(gt_objects: Mapping[Hashable, Sequence[str]], num_images: int = 500, num_pos: int = 3,
                       seed: int = 0) -> dict[Hashable, list[str]]:
    """``num_images`` images with at least ``num_pos`` distinct objects, drawn by ``seed`` (all if fewer), in the
    drawn order: ``{image_id: [object, ...]}`` with each image's objects deduplicated in first-seen order."""
    if num_images < 1 or num_pos < 1:
        raise ValueError(f"num_images and num_pos must be >= 1, got {num_images} and {num_pos}")
    unique = {image_id: list(dict.fromkeys(objects)) for image_id, objects in gt_objects.items()}
    eligible = [image_id for image_id, objects in unique.items() if len(objects) >= num_pos]
    if not eligible:
        raise ValueError(f"no image has at least {num_pos} different objects to ask about")
    chosen = random.Random(seed).sample(eligible, min(num_images, len(eligible)))
    return {image_id: unique[image_id] for image_id in chosen}


def object_statistics(images: Mapping[Hashable, Sequence[str]]) -> tuple[Counter, dict[str, Counter]]:
    """(frequency, co-occurrence) over ``images``: images containing c / containing both a and b, in first-seen
    order (the order ties are broken in)."""
    frequency: Counter = Counter()
    cooccurrence: dict[str, Counter] = {}
    for objects in images.values():
        frequency.update(objects)
        for a in objects:
            row = cooccurrence.setdefault(a, Counter())
            row.update(b for b in objects if b != a)
    return frequency, cooccurrence


def sample_pope_questions(images: Mapping[Hashable, Sequence[str]], setting: str = "random", num_pos: int = 3,
                          seed: int = 0) -> list[dict]:
    """``[{"image_id", "object", "label", "question"}]``: per image positive, negative, positive, ... (see above).

    ``images``: ``select_pope_images``'s output (every image has at least ``num_pos`` objects).
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown POPE setting {setting!r}; choose from {list(SETTINGS)}")
    frequency, cooccurrence = object_statistics(images)
    by_frequency = sorted(frequency, key=lambda o: -frequency[o])  # stable: ties in first-seen order
    rng = random.Random(seed)
    questions: list[dict] = []
    for image_id, objects in images.items():
        if len(objects) < num_pos:
            raise ValueError(f"image {image_id!r} has {len(objects)} objects, fewer than num_pos={num_pos}")
        asked = list(objects[:num_pos])
        for positive in objects[:num_pos]:
            def free(o: str) -> bool:
                return o not in asked and o not in objects
            ranked = {"random": [], "popular": by_frequency,
                      "adversarial": sorted(cooccurrence[positive], key=lambda o: -cooccurrence[positive][o])}
            negative = next((o for o in ranked[setting] if free(o)), None)
            if negative is None:
                candidates = [o for o in frequency if free(o)]
                if not candidates:
                    raise ValueError(f"image {image_id!r}: no absent object is left to ask about (only "
                                     f"{len(frequency)} objects occur in the drawn images)")
                negative = rng.choice(candidates)
            asked.append(negative)
            questions.append({"image_id": image_id, "object": positive, "label": "yes",
                              "question": object_question(positive)})
            questions.append({"image_id": image_id, "object": negative, "label": "no",
                              "question": object_question(negative)})
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

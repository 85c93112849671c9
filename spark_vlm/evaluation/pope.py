"""POPE-style probing of a stage-2 captioner: "Is there a {object} in the image?" answered in open_flamingo's
few-shot style, the answer being whichever of " yes" / " no" the model finds more likely next. The questions and
their scores (random / popular / adversarial negatives) come from spark_vlm/metrics/pope.py.

Each query gets `shots` interleaved examples from *other* images first (half answered yes, half no, drawn by
seed from the ground truth), then the query image:
  <image>Question: Is there a star in the image? Answer: yes<|endofchunk|><image>Question: ... Answer: no
  <|endofchunk|><image>Question: Is there a ring in the image? Answer:
A captioner trained on captions alone has never seen this format; near-chance scores are an honest outcome.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.images import SkipCounter, to_pixel_values
from ..data.padding import right_pad
from ..data.prompts import END_OF_CHUNK, IMAGE_TOKEN
from ..data.readers import load_pairs, read_coco_instances
from ..data.text import object_question, question_answer
from ..metrics.pope import SETTINGS, pope_scores, sample_pope_questions
from .captioner import load_captioner
from .report import Report, read_json, skip_summary


def qa_text(question: str, answer: str | None) -> str:
    """One interleaved chunk: `<image>Question: ... Answer: yes<|endofchunk|>`, or the open query without answer."""
    text = IMAGE_TOKEN + question_answer(question, answer)
    return text if answer is None else text + END_OF_CHUNK


def choose_shots(questions: list[dict], gt_objects: dict, all_categories: list[str], shots: int, seed: int):
    """For each question, `shots` (image_id, question, answer) examples from other images, alternating yes/no."""
    rng = random.Random(seed)
    ids = sorted(gt_objects)
    chosen = []
    for q in questions:
        examples = []
        while len(examples) < shots:
            other = rng.choice(ids)
            if other == q["image_id"] or not gt_objects[other]:
                continue
            want_yes = len(examples) % 2 == 0
            pool = sorted(gt_objects[other]) if want_yes else sorted(set(all_categories) - gt_objects[other])
            if not pool:
                continue
            obj = rng.choice(pool)
            examples.append((other, object_question(obj), "yes" if want_yes else "no"))
        chosen.append(examples)
    return chosen


@torch.no_grad()
def answer_pope(model, tokenizer, questions: list[dict], shots: list[list[tuple]], images: dict[int, np.ndarray],
                batch_size: int = 8) -> list[str]:
    """"yes"/"no" for each question: the more likely of the two answer tokens after the query's "Answer:"."""
    yes_id = tokenizer(" yes", add_special_tokens=False)["input_ids"][0]
    no_id = tokenizer(" no", add_special_tokens=False)["input_ids"][0]
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    for start in tqdm(range(0, len(questions), batch_size), desc="POPE"):
        batch_q, batch_s = questions[start:start + batch_size], shots[start:start + batch_size]
        texts = ["".join(qa_text(q, a) for _, q, a in s) + qa_text(q["question"], None) for q, s in zip(batch_q, batch_s)]
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        length = max(len(r) for r in rows)
        limit = getattr(model.lm.config, "n_positions", None) or getattr(model.lm.config, "max_position_embeddings", None)
        if limit and length > limit:
            raise ValueError(f"a few-shot POPE prompt is {length} tokens but the LM's context is {limit}; use fewer --shots")
        ids, mask = right_pad(rows, pad)
        mask = mask.long()
        pix = np.stack([np.stack([images[i] for i, _, _ in s] + [images[q["image_id"]]]) for q, s in zip(batch_q, batch_s)])
        px = to_pixel_values(torch.from_numpy(pix).flatten(0, 1), dtype).unflatten(0, pix.shape[:2]).to(device)
        logits = model(px, ids.to(device), mask.to(device)).logits
        last = logits[torch.arange(len(rows)), mask.sum(1) - 1]
        answers.extend("yes" if y > n else "no" for y, n in zip(last[:, yes_id].tolist(), last[:, no_id].tolist()))
    return answers


def pope_report(checkpoint, instances: str, image_dir: str, settings=SETTINGS, num_images: int = 100,
                shots: int = 2, seed: int = 0, batch_size: int = 8) -> Report:
    """Accuracy, precision, recall, F1 and yes-ratio (percent) per setting, asking about the first `num_images`
    images (with enough objects) of a COCO instances file; ground truth = the instance annotations' categories."""
    coco = read_json(instances, "instances")
    try:
        per_image, categories = read_coco_instances(instances)
        coco_images = coco["images"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"cannot read instances file {instances}: {e}") from e
    names = sorted(c["name"] for c in categories)
    gt = {im["id"]: {a["category"] for a in per_image.get(im["id"], [])} for im in coco_images}
    model, prompts = load_captioner(checkpoint)
    records = [{"image_id": im["id"], "path": str(Path(image_dir) / im["file_name"]), "captions": ["-"]}
               for im in coco_images]
    counter = SkipCounter(what="images")
    images, _, ids = load_pairs(records, model.vision.config.image_size, counter=counter)
    by_id = dict(zip(ids, images))
    gt = {i: gt[i] for i in ids}

    result = {"num_images_asked": None, "shots": shots, "settings": {}}
    for setting in settings:
        questions = sample_pope_questions(gt, names, setting, seed=seed)
        asked = sorted({q["image_id"] for q in questions})[:num_images]
        questions = [q for q in questions if q["image_id"] in set(asked)]
        examples = choose_shots(questions, gt, names, shots, seed)
        answers = answer_pope(model, prompts.tokenizer, questions, examples, by_id, batch_size)
        result["settings"][setting] = pope_scores(questions, answers)
        result["num_images_asked"] = len(asked)
    result["skipped"] = skip_summary(counter)
    rows = [{"setting": setting, **scores} for setting, scores in result["settings"].items()]
    return Report("POPE", result, rows)

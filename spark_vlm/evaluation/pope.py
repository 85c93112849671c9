"""POPE-style probing of a stage-2 captioner: "Is there a {object} in the image?" answered in open_flamingo's
few-shot style. The questions come either from a COCO instances file (sampled as the reference does, see
spark_vlm/metrics/pope.py) or from the official POPE question files (jsonl, one {"image", "text", "label"} a line).

Each query gets `shots` interleaved examples from *other* images first (alternating yes, no), drawn by seed from the
same question list (whose labels are the ground truth), then the query image:
  <image>Question: Is there a star in the image? Answer: yes<|endofchunk|><image>Question: ... Answer: no
  <|endofchunk|><image>Question: Is there a ring in the image? Answer:
The answer is whichever of " yes" / " no" the model finds more likely next (`answer="likelihood"`), or a greedy
continuation read with the reference's rule (`answer="generate"`, metrics/pope.py:parse_yes_no).
A captioner trained on captions alone has never seen this format; near-chance scores are an honest outcome.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.images import SkipCounter, to_pixel_values
from ..data.padding import left_pad, right_pad
from ..data.readers import load_pairs
from ..data.text import question_answer
from ..data.coco_json import coco_entries
from ..metrics.pope import SETTINGS, parse_yes_no, pope_scores, sample_pope_questions, select_pope_images
from .captioner import load_captioner
from .pope_statements import answer_by_statements, resolve_templates
from .report import Report, check_batch_size, read_json, skip_summary

ANSWER_MODES = ("likelihood", "generate", "statement")  # statement: pope_statements.py, not POPE's prompt
QUESTION_OBJECT = re.compile(r"^Is there an? (.+?) in the im\w*\?$")  # POPE's question ("imange" typo included)


def qa_ids(prompts, question: str, answer: str | None) -> list[int]:
    """One interleaved chunk `<image> Question: ... Answer: yes<|endofchunk|>`, or the open query without answer,
    tokenised exactly as the training text (`data.object_questions`) is."""
    return prompts.chunk_ids(question_answer(question, answer), closed=answer is not None)


def instance_questions(instances: str, settings, num_images: int, seed: int) -> tuple[dict, dict]:
    """({setting: questions}, {image_id: file_name}) from a COCO instances file (objects in annotation order)."""
    coco = read_json(instances, "instances")
    where = f"instances file {instances}"
    images = coco_entries(coco, "images", where, ids=("id",), strings=("file_name",))
    names = {c["id"]: c["name"] for c in coco_entries(coco, "categories", where, ids=("id",), strings=("name",))}
    gt: dict = {}
    for i, ann in enumerate(coco_entries(coco, "annotations", where, ids=("image_id", "category_id"))):
        if ann["category_id"] not in names:
            raise ValueError(f"instances file {instances}: annotations[{i}] has unknown category_id "
                             f"{ann['category_id']!r}")
        gt.setdefault(ann["image_id"], []).append(names[ann["category_id"]])
    files = {im["id"]: im["file_name"] for im in images}
    gt = {i: objects for i, objects in gt.items() if i in files}
    drawn = select_pope_images(gt, num_images, seed=seed)
    return {s: sample_pope_questions(drawn, s, seed=seed) for s in settings}, {i: files[i] for i in drawn}


def read_pope_questions(path) -> list[dict]:
    """An official POPE question file (jsonl, one {"question_id", "image", "text" (or "question"), "label"} a line)
    -> [{"image_id": the image file name, "question", "label"}]."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"cannot read POPE question file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"POPE question file {path} is not UTF-8 text: {e.reason} at byte {e.start}") from e
    questions = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"POPE question file {path} line {n} is not valid JSON: {e}") from e
        text = entry.get("text", entry.get("question")) if isinstance(entry, dict) else None
        if not isinstance(text, str) or not isinstance(entry.get("image"), str) or not entry["image"]:
            raise ValueError(f"POPE question file {path} line {n} needs a string 'image' and 'text' (or 'question')")
        if entry.get("label") not in ("yes", "no"):
            raise ValueError(f"POPE question file {path} line {n} has label {entry.get('label')!r}; "
                             "expected 'yes' or 'no'")
        asked = QUESTION_OBJECT.match(text.strip())
        questions.append({"image_id": entry["image"], "question": text, "label": entry["label"],
                          "object": asked.group(1) if asked else None})
    if not questions:
        raise ValueError(f"POPE question file {path} holds no questions")
    return questions


def choose_shots(questions: list[dict], shots: int, seed: int) -> list[list[tuple]]:
    """For each question, `shots` (image_id, question, answer) examples from the other questions' images,
    alternating yes/no. Raises (never loops) when no other image has a question with the needed answer."""
    if shots < 0:
        raise ValueError(f"--shots must be >= 0, got {shots}")
    rng = random.Random(seed)
    pools = {label: [q for q in questions if q["label"] == label] for label in ("yes", "no")}
    per_image = Counter((q["image_id"], q["label"]) for q in questions)
    chosen = []
    for q in questions:
        examples = []
        for k in range(shots):
            label = ("yes", "no")[k % 2]
            if len(pools[label]) == per_image[q["image_id"], label]:
                raise ValueError(f"cannot draw {shots} few-shot examples for image {q['image_id']!r}: no other image "
                                 f"has a {label!r} question (use --shots 0 or more images)")
            while (example := rng.choice(pools[label]))["image_id"] == q["image_id"]:
                pass  # terminates: another image has one (checked above)
            examples.append((example["image_id"], example["question"], label))
        chosen.append(examples)
    return chosen


def _batches(model, prompts, questions, shots, images, batch_size):
    """(token rows, pixel values [B, shots + 1, 3, S, S]) per batch of few-shot prompts."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    limit = getattr(model.lm.config, "n_positions", None) or getattr(model.lm.config, "max_position_embeddings", None)
    for start in tqdm(range(0, len(questions), batch_size), desc="POPE"):
        batch_q, batch_s = questions[start:start + batch_size], shots[start:start + batch_size]
        rows = [[t for _, question, a in s for t in qa_ids(prompts, question, a)] + qa_ids(prompts, q["question"], None)
                for q, s in zip(batch_q, batch_s)]
        length = max(len(r) for r in rows)
        if limit and length > limit:
            raise ValueError(f"a few-shot POPE prompt is {length} tokens but the LM's context is {limit}; use fewer --shots")
        pix = np.stack([np.stack([images[i] for i, _, _ in s] + [images[q["image_id"]]]) for q, s in zip(batch_q, batch_s)])
        yield rows, to_pixel_values(torch.from_numpy(pix).flatten(0, 1), dtype).unflatten(0, pix.shape[:2]).to(device)


@torch.no_grad()
def answer_pope(model, prompts, questions: list[dict], shots: list[list[tuple]], images: dict, batch_size: int = 8,
                answer: str = "likelihood") -> list[str]:
    """"yes"/"no" for each question: the more likely answer token after "Answer:", or a parsed greedy answer."""
    if answer not in ("likelihood", "generate"):  # "statement" asks no question: answer_by_statements
        raise ValueError(f"answer_pope answers by 'likelihood' or 'generate', got {answer!r}")
    tokenizer = prompts.tokenizer
    yes_id = tokenizer(" yes", add_special_tokens=False)["input_ids"][0]
    no_id = tokenizer(" no", add_special_tokens=False)["input_ids"][0]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    for rows, px in _batches(model, prompts, questions, shots, images, batch_size):
        if answer == "likelihood":
            ids, mask = right_pad(rows, pad)
            logits = model(px, ids.to(device), mask.long().to(device)).logits
            last = logits[torch.arange(len(rows)), mask.sum(1) - 1]
            answers.extend("yes" if y > n else "no" for y, n in zip(last[:, yes_id].tolist(), last[:, no_id].tolist()))
        else:  # generation wants left padding
            ids, mask = left_pad(rows, pad)
            new = model.generate(px, ids.to(device), mask.long().to(device), max_new_tokens=8)
            answers.extend(parse_yes_no(prompts.decode(row).strip()) for row in new.tolist())
    return answers


def pope_report(checkpoint, image_dir: str, instances: str | None = None, question_files=(), settings=SETTINGS,
                num_images: int = 500, shots: int = 2, seed: int = 0, batch_size: int = 8,
                answer: str = "likelihood", device: str = "cpu", vision_path: str | None = None,
                lm_path: str | None = None, statements: str | list[str] = "plain") -> Report:
    """Accuracy, precision, recall, F1 and yes-ratio (percent) per setting (or per question file). With
    `answer="statement"` the questions are answered from caption likelihoods (pope_statements.py; `statements`:
    preset names and/or templates with "{object}") and `shots` is not used."""
    if answer not in ANSWER_MODES:
        raise ValueError(f"unknown POPE answer mode {answer!r}; choose from {list(ANSWER_MODES)}")
    check_batch_size(batch_size)
    templates = resolve_templates(statements)
    if bool(instances) == bool(question_files):
        raise ValueError("give either --instances (questions sampled as POPE does) or --questions (POPE's files)")
    if not Path(image_dir).is_dir():
        raise ValueError(f"--image-dir {image_dir} is not a directory")
    if instances:
        by_setting, files = instance_questions(instances, settings, num_images, seed)
    else:
        by_setting = {Path(f).stem: read_pope_questions(f) for f in question_files}
        files = {q["image_id"]: q["image_id"] for qs in by_setting.values() for q in qs}
    statement, scored = answer == "statement", {}
    if statement and (unparsed := [q["question"] for qs in by_setting.values() for q in qs if not q.get("object")]):
        raise ValueError(f"--answer statement needs the object of each question; cannot read it from "
                         f"{unparsed[0]!r} (expected 'Is there a/an OBJECT in the image?')")
    model, prompts = load_captioner(checkpoint, device, vision_path, lm_path)
    # load_pairs wants integer ids; the questions' ids are COCO ids or (POPE's files) file names
    asked = list(files)
    records = [{"image_id": k, "path": str(Path(image_dir) / files[i]), "captions": ["-"]} for k, i in enumerate(asked)]
    counter = SkipCounter(what="images")
    images, _, ids = load_pairs(records, model.vision.config.image_size, counter=counter)  # only the asked images
    by_id = {asked[k]: image for k, image in zip(ids, images)}
    result = {"source": instances or list(question_files), "answer": answer, "shots": 0 if statement else shots,
              **({"statements": list(templates)} if statement else {}), "settings": {}}
    for setting, questions in by_setting.items():
        questions = [q for q in questions if q["image_id"] in by_id]
        if not questions:
            raise ValueError(f"POPE {setting}: none of the images asked about could be read from {image_dir}")
        if statement:
            answers = answer_by_statements(model, prompts, questions, by_id, templates, cache=scored)
        else:
            answers = answer_pope(model, prompts, questions, choose_shots(questions, shots, seed), by_id, batch_size,
                                  answer)
        scores = pope_scores(questions, answers)
        result["settings"][setting] = {**scores, "num_images": len({q["image_id"] for q in questions})}
    result["skipped"] = skip_summary(counter)
    rows = [{"setting": setting, **scores} for setting, scores in result["settings"].items()]
    mode = f"{answer}, {len(templates)} templates" if statement else answer
    return Report(f"POPE ({mode}; chance: accuracy 50, yes-ratio 50 on balanced questions)", result, rows)

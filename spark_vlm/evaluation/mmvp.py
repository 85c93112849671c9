"""MMVP-VLM (Tong et al. 2024, github.com/tsb0601/MMVP) with a stage-1 run, from local files.

Data: the benchmark folder as distributed (huggingface.co/datasets/MMVP/MMVP_VLM): `Questions.csv` with the
columns `Question ID`, `Type`, `Statement`, and `MLLM_VLM Images/<Type>/<Question ID>.jpg`. As the reference
scripts/evaluate_vlm.py: consecutive rows form a pair (statement k describes image k), each text is
"a photo of " + statement, and a pair is right only when each of its two texts prefers its own image. Accuracy
per visual pattern (`Type`) and their mean (the benchmark's average), beside chance (25: two independent coin
flips).

One deliberate deviation: strict comparisons. The reference predicts image 1 when softmax(image 1) > 0.5, so a
tie goes to image 2 and a model that cannot tell the two images apart gets every second text right; here a tie
is wrong for both texts. (A text-only control is therefore 0 by construction: without the image, the two
images' scores are equal.)
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..data.images import SkipCounter
from ..data.readers import load_pairs
from ..metrics.compositionality import grouped_percent, mmvp_pair_correct
from .report import Report, skip_summary
from .stage1_run import image_embeddings, load_stage1_run, text_embeddings

COLUMNS = ("Question ID", "Type", "Statement")
IMAGE_FOLDER = "MLLM_VLM Images"
PREFIX = "a photo of "  # the reference's prompt


def read_mmvp(root) -> list[dict]:
    """Pairs {type, qids (2), statements (2), paths (2)} from `root`/Questions.csv, in file order."""
    path = Path(root) / "Questions.csv"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ValueError(f"cannot read MMVP-VLM file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"MMVP-VLM file {path} is not UTF-8 (byte {e.start})") from e
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (header: {reader.fieldnames})")
    rows = []
    for line, row in enumerate(reader, start=2):
        qid, kind, statement = (str(row[c] or "").strip() for c in COLUMNS)
        if not qid.isdigit():
            raise ValueError(f"{path} line {line}: Question ID {row['Question ID']!r} is not a whole number")
        if not kind or not statement:
            raise ValueError(f"{path} line {line}: empty {'Type' if not kind else 'Statement'}")
        rows.append((line, int(qid), kind, statement))
    if not rows or len(rows) % 2:
        raise ValueError(f"{path}: {len(rows)} questions; MMVP-VLM needs pairs of consecutive rows")
    if len({r[1] for r in rows}) != len(rows):
        raise ValueError(f"{path}: a Question ID occurs twice")
    pairs = []
    for (line, q1, kind, s1), (_, q2, kind2, s2) in zip(rows[::2], rows[1::2]):
        if kind2 != kind:
            raise ValueError(f"{path} lines {line}-{line + 1}: a pair mixes the types {kind!r} and {kind2!r}")
        folder = Path(root) / IMAGE_FOLDER / kind  # the reference reads both images from the first row's type
        pairs.append({"type": kind, "qids": (q1, q2), "statements": (s1, s2),
                      "paths": (str(folder / f"{q1}.jpg"), str(folder / f"{q2}.jpg"))})
    return pairs


def mmvp_report(checkpoint, root, batch_size: int = 64, strict: bool = False) -> Report:
    pairs = read_mmvp(root)
    model, tokenizer = load_stage1_run(checkpoint)
    counter = SkipCounter(what="images")
    records = [{"image_id": q, "path": p, "captions": []} for pr in pairs for q, p in zip(pr["qids"], pr["paths"])]
    images, _, kept = load_pairs(records, model.config.image_size, strict=strict, counter=counter,
                                 require_captions=False)
    row = {q: r for r, q in enumerate(kept)}
    usable = [pr for pr in pairs if all(q in row for q in pr["qids"])]  # a pair needs both its images
    if not usable:
        raise ValueError(f"no MMVP-VLM pair has both images readable under {Path(root) / IMAGE_FOLDER}")

    img = image_embeddings(model, images, batch_size).numpy()
    txt = text_embeddings(model, tokenizer, [PREFIX + s for pr in usable for s in pr["statements"]]).numpy()
    txt = txt.reshape(len(usable), 2, -1)
    img = img[np.array([[row[q] for q in pr["qids"]] for pr in usable])]  # [N, 2, D]
    sims = np.einsum("ntd,nid->nti", txt, img)  # [N, text, image]
    per_type, average = grouped_percent(mmvp_pair_correct(sims), [pr["type"] for pr in usable])

    result = {"checkpoint": checkpoint, "data": str(root), "num_pairs": len(usable),
              "num_pairs_skipped": len(pairs) - len(usable), "average": average, "chance": 25.0,
              "per_type": per_type, "skipped": skip_summary(counter)}
    rows = [{"visual pattern": t, "pair accuracy": v, "pairs": sum(pr["type"] == t for pr in usable),
             "chance": 25.0} for t, v in per_type.items()]
    rows.append({"visual pattern": "average", "pair accuracy": average, "pairs": len(usable), "chance": 25.0})
    return Report("MMVP-VLM (strict: ties are wrong)", result, rows)

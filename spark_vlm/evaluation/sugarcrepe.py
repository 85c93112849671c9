"""SugarCrepe (Hsieh et al. 2023, github.com/RAIVNLab/sugar-crepe) with a stage-1 run, from local files.

Data: the benchmark's `data/` folder, one JSON file per type ({add,replace,swap}_{obj,att} and replace_rel), each
`{id: {"filename": COCO val2017 file name, "caption": true, "negative_caption": hard negative}}`, and the COCO
val2017 images. Types whose file is absent are not scored. An item is passed when the image's cosine with the
caption is strictly above that with the negative (as the reference main_eval.py: `pos > neg`; a tie is wrong).

Controls beside each type's accuracy: chance (50), the same model with a blank (mid-grey) image in place of the
photo (what the text encoder alone prefers), and the text-only heuristic "the shorter caption wins".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.images import SkipCounter
from ..data.readers import load_pairs
from ..metrics.compositionality import percent, shorter_caption_wins, strict_wins
from .report import Report, read_json, skip_summary
from .stage1_run import image_embeddings, load_stage1_run, text_embeddings

TYPES = ("add_obj", "add_att", "replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att")
FIELDS = ("filename", "caption", "negative_caption")


def read_sugarcrepe(data_dir) -> list[dict]:
    """Items {type, id, filename, caption, negative_caption} of every type file present in `data_dir`."""
    items, found = [], 0
    for kind in TYPES:
        path = Path(data_dir) / f"{kind}.json"
        if not path.is_file():
            continue
        found += 1
        try:
            data = read_json(path, f"SugarCrepe {kind}")
        except UnicodeDecodeError as e:
            raise ValueError(f"SugarCrepe file {path} is not UTF-8 (byte {e.start})") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object {{id: {{filename, caption, negative_caption}}}}, "
                             f"got a {type(data).__name__}")
        for key, entry in data.items():
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: entry {key!r} is a {type(entry).__name__}, not an object with "
                                 f"{', '.join(FIELDS)}")
            for field in FIELDS:
                value = entry.get(field)
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{path}: entry {key!r} has no usable {field!r} (got {value!r})")
            items.append({"type": kind, "id": key, **{f: entry[f] for f in FIELDS}})
    if not found:
        raise ValueError(f"{data_dir} holds none of the SugarCrepe files {', '.join(t + '.json' for t in TYPES)}")
    return items


def sugarcrepe_report(checkpoint, data_dir, image_dir, batch_size: int = 64, strict: bool = False) -> Report:
    items = read_sugarcrepe(data_dir)
    model, tokenizer = load_stage1_run(checkpoint)
    size = model.config.image_size

    # Each image once (items share images); an item whose image cannot be read is dropped with it.
    files = sorted({it["filename"] for it in items})
    counter = SkipCounter(what="images")
    images, _, kept = load_pairs([{"image_id": i, "path": str(Path(image_dir) / f), "captions": []}
                                  for i, f in enumerate(files)], size, strict=strict, counter=counter,
                                 require_captions=False)
    row = {files[i]: r for r, i in enumerate(kept)}
    items = [it for it in items if it["filename"] in row]
    if not items:
        raise ValueError(f"no SugarCrepe image could be read from {image_dir} ({len(files)} files named)")

    texts = sorted({t for it in items for t in (it["caption"], it["negative_caption"])})
    column = {t: j for j, t in enumerate(texts)}
    txt = text_embeddings(model, tokenizer, texts).numpy()
    img = image_embeddings(model, images, batch_size).numpy()
    blank = image_embeddings(model, np.full((1, size, size, 3), 128, np.uint8)).numpy()[0]

    result = {"checkpoint": checkpoint, "data": str(data_dir), "image_dir": str(image_dir),
              "num_items": len(items), "chance": 50.0, "per_type": {}}
    rows = []
    for kind in [t for t in TYPES if any(it["type"] == t for it in items)]:
        its = [it for it in items if it["type"] == kind]
        pos = np.array([column[it["caption"]] for it in its])
        neg = np.array([column[it["negative_caption"]] for it in its])
        r = np.array([row[it["filename"]] for it in its])
        scores = {"accuracy": percent(strict_wins((img[r] * txt[pos]).sum(1), (img[r] * txt[neg]).sum(1))),
                  "blank_image_control": percent(strict_wins(txt[pos] @ blank, txt[neg] @ blank)),
                  "shorter_caption_wins": percent(shorter_caption_wins([it["caption"] for it in its],
                                                                       [it["negative_caption"] for it in its])),
                  "num_items": len(its)}
        result["per_type"][kind] = scores
        rows.append({"type": kind, **scores, "chance": 50.0})
    per_type = result["per_type"].values()
    for key in ("accuracy", "blank_image_control", "shorter_caption_wins"):
        result[f"mean_{key}"] = float(np.mean([s[key] for s in per_type]))
    rows.append({"type": "mean over types", **{k: result[f"mean_{k}"] for k in
                                               ("accuracy", "blank_image_control", "shorter_caption_wins")},
                 "num_items": len(items), "chance": 50.0})
    result["skipped"] = skip_summary(counter)
    return Report("SugarCrepe (strict: ties are wrong)", result, rows)

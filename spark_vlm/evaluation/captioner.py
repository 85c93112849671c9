"""A trained stage-2 run for evaluation: load the captioner from its directory and caption images with it,
zero-shot (the training prompt `<image>`) or few-shot (open_flamingo's captioning prompt, see data/prompts.py).

Few-shot examples are drawn as open_flamingo's evaluation does (a seeded random sample of other images with their
captions before each query), from a COCO captions file; never the query image itself. One caption per shown
image, also drawn by the seed (open_flamingo's demo pool holds one caption per image).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.coco_json import coco_entries
from ..data.images import SkipCounter, to_pixel_values
from ..data.prompts import FlamingoPrompts
from ..data.readers import IMAGE_EXTENSIONS, load_pairs
from ..models.flamingo import SparkFlamingo
from .report import check_batch_size, read_json


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> str:
    """--device: "auto" is cuda when a GPU is visible, else cpu; asking for cuda without one is an error."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose from {list(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return name


def load_captioner(run_dir: str | Path, device: str = "cpu", vision_path: str | None = None,
                   lm_path: str | None = None) -> tuple[SparkFlamingo, FlamingoPrompts]:
    """The captioner of a stage-2 run (`SparkFlamingo.from_pretrained`: the frozen parts from the manifest's
    sources or from `vision_path` / `lm_path`, hash-checked) and its prompt format."""
    model = SparkFlamingo.from_pretrained(str(run_dir), vision_path, lm_path, device=resolve_device(device))
    return model, FlamingoPrompts(model.tokenizer)


class Shots(NamedTuple):
    """Few-shot examples: uint8 images [P, S, S, 3], and for each query its (image row, caption) examples."""
    images: np.ndarray
    rows: list[list[tuple[int, str]]]


def context_length(model: SparkFlamingo) -> int | None:
    config = model.lm.config.get_text_config()
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def _batch(model, prompts, images: np.ndarray, shots: list[list[tuple[int, str]]] | None, shot_images):
    """(pixel values [B, shots + 1, 3, S, S], prompt ids, mask) for one batch of query images."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    if shots is None:
        prompt = prompts.generation_prompts(len(images))
        stack = images[:, None]
    else:
        prompt = prompts.few_shot_prompts([[caption for _, caption in row] for row in shots])
        stack = np.stack([np.stack([shot_images[i] for i, _ in row] + [image]) for row, image in zip(shots, images)])
        limit = context_length(model)
        if limit and prompt["input_ids"].shape[1] > limit:
            raise ValueError(f"a few-shot caption prompt is {prompt['input_ids'].shape[1]} tokens but the LM's "
                             f"context is {limit}; use fewer --shots")
    pixels = torch.from_numpy(np.ascontiguousarray(stack)).to(device)
    px = to_pixel_values(pixels.flatten(0, 1), dtype).unflatten(0, stack.shape[:2])
    return px, prompt["input_ids"].to(device), prompt["attention_mask"].to(device)


@torch.no_grad()
def caption_images(model: SparkFlamingo, prompts: FlamingoPrompts, images: np.ndarray, batch_size: int = 16,
                   progress: bool = True, shots: Shots | None = None, **generate_kwargs) -> list[str]:
    """uint8 images [N, S, S, 3] -> one caption each: prompt `<image>` (or the few-shot prompt with `shots`),
    stop at `<|endofchunk|>`."""
    captions: list[str] = []
    check_batch_size(batch_size)
    for start in tqdm(range(0, len(images), batch_size), desc="captioning", disable=not progress):
        rows = shots.rows[start:start + batch_size] if shots else None
        px, ids, mask = _batch(model, prompts, images[start:start + batch_size], rows, shots and shots.images)
        new_ids = model.generate(px, ids, mask, **generate_kwargs)
        decode = prompts.decode_few_shot if shots else prompts.decode
        captions.extend(decode(row) for row in new_ids)
    return captions


def read_shot_pool(captions_file, image_dir: Path) -> list[tuple[Path, list[str]]]:
    """(image path, its captions) for every captioned image of a COCO captions file (paths under image_dir)."""
    coco = read_json(captions_file, "COCO captions")
    where = f"--shots-from {captions_file}"
    captions: dict = {}
    for ann in coco_entries(coco, "annotations", where, ids=("image_id",), strings=("caption",)):
        captions.setdefault(ann["image_id"], []).append(ann["caption"])
    images = coco_entries(coco, "images", where, ids=("id",), strings=("file_name",))
    return [((image_dir / im["file_name"]).resolve(), captions[im["id"]]) for im in images if im["id"] in captions]


def draw_shots(query_paths: list[Path], pool: list[tuple[Path, list[str]]], shots: int, seed: int,
               image_size: int) -> Shots:
    """For each query, `shots` distinct other images of the pool (seeded), one caption each; loads the drawn
    images (an unreadable example is an error naming it, never a silently shorter prompt)."""
    if shots < 1:
        raise ValueError(f"--shots must be >= 1 for few-shot captioning, got {shots}")
    rng = random.Random(seed)
    rows = []
    for query in query_paths:
        query = Path(query).resolve()
        drawn = rng.sample(range(len(pool)), min(shots + 1, len(pool)))
        picks = [i for i in drawn if pool[i][0] != query][:shots]  # never the query image itself
        if len(picks) < shots:
            raise ValueError(f"cannot draw {shots} few-shot examples for {query.name}: the --shots-from file has "
                             f"{len(pool)} captioned images (the query excluded: {len(picks)})")
        rows.append([(i, rng.choice(pool[i][1])) for i in picks])
    used = sorted({i for row in rows for i, _ in row})
    records = [{"image_id": i, "path": str(pool[i][0]), "captions": ["-"]} for i in used]
    images, _, ids = load_pairs(records, image_size, strict=True)
    position = {i: k for k, i in enumerate(ids)}
    return Shots(images, [[(position[i], caption) for i, caption in row] for row in rows])


def image_records(image_dir: Path, annotations: str | None) -> tuple[list[dict], dict]:
    """Records for `load_pairs` (a placeholder caption each) and a map from our int id to the output id: the COCO
    file's `images[].id` with `annotations`, else every image file in `image_dir`, its file name as its id."""
    if annotations:
        try:
            images = read_json(annotations, "COCO")["images"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"cannot read the images of the COCO file {annotations}: {e}") from e
        recs = [{"image_id": int(im["id"]), "path": str(image_dir / im["file_name"]), "captions": ["-"]}
                for im in images]
        return recs, {r["image_id"]: r["image_id"] for r in recs}
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    recs = [{"image_id": i, "path": str(p), "captions": ["-"]} for i, p in enumerate(files)]
    return recs, {i: p.name for i, p in enumerate(files)}


def caption_folder(checkpoint, image_dir, annotations: str | None = None, limit: int | None = None,
                   batch_size: int = 16, strict: bool = False, device: str = "cpu",
                   vision_path: str | None = None, lm_path: str | None = None, shots: int = 0,
                   shots_from: str | None = None, seed: int = 0,
                   **generate_kwargs) -> tuple[list[dict], SkipCounter]:
    """COCO results `[{"image_id", "caption"}]` for the images of a folder (or those a COCO file names), and the
    counter of unreadable images that were skipped. `shots` > 0: few-shot prompts, examples drawn with `seed` from
    `shots_from` (default: `annotations`), their file names under `image_dir`."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"--image-dir {image_dir} is not a directory")
    if shots and not (shots_from or annotations):
        raise ValueError("--shots needs captions to show: give --shots-from (or --annotations)")
    pool = read_shot_pool(shots_from or annotations, image_dir) if shots else None  # bad files fail before loading
    model, prompts = load_captioner(checkpoint, device, vision_path, lm_path)
    records, out_ids = image_records(image_dir, annotations)
    records = records[:limit] if limit else records
    counter = SkipCounter(what="images")
    images, _, ids = load_pairs(records, model.vision.config.image_size, strict=strict, counter=counter)
    few = None
    if shots:
        paths = {r["image_id"]: r["path"] for r in records}
        few = draw_shots([paths[i] for i in ids], pool, shots, seed, model.vision.config.image_size)
    captions = caption_images(model, prompts, images, batch_size=batch_size, shots=few, **generate_kwargs)
    return [{"image_id": out_ids[i], "caption": c} for i, c in zip(ids, captions)], counter

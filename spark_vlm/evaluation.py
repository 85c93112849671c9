"""Shared pieces of the evaluation CLIs in eval/: load a stage-1 run, encode in batches, load data, report.

Everything runs under torch.no_grad on the CPU or the first GPU, in fixed batches and fixed order, so
a repeated run gives exactly the same numbers. Reports hold no timings for the same reason.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.images import SkipCounter, to_pixel_values
from .data.readers import load_pairs, read_coco_captions, read_karpathy
from .data.scenes import SceneConfig, generate_scene
from .data.tokenizer import CaptionTokenizer
from .models.dual_encoder import SparkModel

# CLIP's 7-template subset, chosen on ImageNet by the CLIP authors (openai/CLIP, notebooks/
# Prompt_Engineering_for_ImageNet.ipynb): a small, standard zero-shot ensemble.
CLIP_TEMPLATES = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                  "a {} in a video game.", "art of the {}.", "a photo of the small {}.")
# The built-in scenes' captions never say "photo"; these phrasings all occur in them.
SCENE_TEMPLATES = ("a {}", "one {}", "a picture of a {}")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_checkpoint(run_dir) -> tuple[SparkModel, CaptionTokenizer]:
    """(model in eval mode on `device()`, tokenizer) from a stage-1 run directory."""
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a stage-1 run: no config.json (train with "
                                f"`spark_vlm.training.stage1` and pass its run directory)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "spark":
        raise ValueError(f"{run_dir} holds a {model_type!r} model, not a stage-1 SPARK dual encoder")
    if not ((run_dir / "tokenizer.model").is_file() or (run_dir / "tokenizer_config.json").is_file()):
        raise FileNotFoundError(f"{run_dir} has no tokenizer (tokenizer.model); the run is incomplete")
    model = SparkModel.from_pretrained(str(run_dir)).to(device()).eval()
    return model, CaptionTokenizer.load(run_dir)


# ------------------------------------------------------------------------------------------ encoding
def iter_pixel_batches(images: np.ndarray, batch_size: int, desc: str):
    """(start index, pixel_values on the model's device) for consecutive batches of uint8 images."""
    for start in tqdm(range(0, len(images), batch_size), desc=desc, total=math.ceil(len(images) / batch_size),
                      leave=False, mininterval=1.0):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
        yield start, to_pixel_values(batch.to(device()))


@torch.no_grad()
def encode_images(model, images: np.ndarray, batch_size: int = 64, desc: str = "encode images") -> torch.Tensor:
    """Normalised global image embeddings [N, D] (float32, CPU) of uint8 images [N, H, W, 3]."""
    out = [model.encode_image(px).float().cpu() for _, px in iter_pixel_batches(images, batch_size, desc)]
    return torch.cat(out) if out else torch.zeros(0, model.config.embed_dim)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: list[str], batch_size: int = 256,
                 desc: str = "encode texts") -> torch.Tensor:
    """Normalised global text embeddings [N, D] (float32, CPU); captions longer than max_text_len are cut."""
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False, mininterval=1.0):
        enc = tokenizer(list(texts[start:start + batch_size]), model.config.max_text_len)
        out.append(model.encode_text(enc["input_ids"].to(device()), enc["attention_mask"].to(device())).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.embed_dim)


def encode_prompts(model, tokenizer, names: list[str], templates, batch_size: int = 256) -> torch.Tensor:
    """Text embeddings [C, T, D] of every class name written into every template."""
    texts = [t.format(name) for name in names for t in templates]
    emb = encode_texts(model, tokenizer, texts, batch_size, desc="encode prompts")
    return emb.reshape(len(names), len(templates), -1)


# ------------------------------------------------------------------------------------------ data
def builtin_scenes(split: str, num_images: int, image_size: int) -> list[dict]:
    """Scenes 0..num_images-1 of the built-in split (the default seed-0 generator), with ground truth."""
    config = SceneConfig(image_size=image_size)
    return [generate_scene(config, split, i)
            for i in tqdm(range(num_images), desc=f"{split} scenes", leave=False, mininterval=1.0)]


def scene_images(scenes: list[dict], image_size: int) -> np.ndarray:
    """The scenes' images as one uint8 array [N, S, S, 3] (empty when there are none)."""
    if not scenes:
        return np.zeros((0, image_size, image_size, 3), np.uint8)
    return np.stack([s["image"] for s in scenes])


def add_caption_data_args(parser: argparse.ArgumentParser) -> None:
    """--annotations/--karpathy + --image-dir, or the built-in scenes (the default)."""
    parser.add_argument("--annotations", help="COCO captions JSON (captions_val2017.json)")
    parser.add_argument("--karpathy", help="Karpathy split JSON (dataset_coco.json)")
    parser.add_argument("--split", default="test", help="Karpathy split (default: test)")
    parser.add_argument("--image-dir", help="folder of the images named in the annotations")
    parser.add_argument("--num-images", type=int, default=500,
                        help="built-in scenes only: how many test scenes (default 500)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image instead of skipping")


def load_caption_data(args, image_size: int) -> tuple[np.ndarray, list[list[str]], list[int], dict]:
    """(images uint8 [N, S, S, 3], captions per image, image ids, data description incl. skip counts)."""
    if args.annotations or args.karpathy:
        if not args.image_dir:
            raise ValueError("--image-dir is required with --annotations / --karpathy")
        if args.annotations and args.karpathy:
            raise ValueError("give --annotations or --karpathy, not both")
        records = (read_coco_captions(args.annotations, args.image_dir) if args.annotations
                   else read_karpathy(args.karpathy, args.image_dir, args.split))
        counter = SkipCounter(what="images")
        images, captions, ids = load_pairs(records, image_size, strict=args.strict, counter=counter)
        source = args.annotations or f"{args.karpathy} ({args.split})"
        return images, captions, ids, {"data": source, "skipped": skip_summary(counter)}
    scenes = builtin_scenes("test", args.num_images, image_size)
    return (scene_images(scenes, image_size), [s["captions"] for s in scenes], [s["image_id"] for s in scenes],
            {"data": f"built-in scenes, test split, {len(scenes)} images", "skipped": skip_summary(None)})


def skip_summary(counter: SkipCounter | None) -> dict:
    """{"total": n, "by_reason": {...}} for the report (zero when nothing could go wrong)."""
    if counter is None:
        return {"total": 0, "by_reason": {}}
    return {"total": counter.total, "by_reason": dict(sorted(counter.counts.items()))}


# ------------------------------------------------------------------------------------------ reports
def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def markdown_table(result: dict, rows: list[dict] | None = None) -> str:
    """A markdown table: `rows` as given (columns = the first row's keys), or the result's scalars as
    `| metric | value |` rows, nested dicts of scalars flattened to "outer.inner"; lists are left out."""
    if rows is None:
        rows = []

        def walk(prefix, d):
            for k, v in d.items():
                name = f"{prefix}{k}"
                if isinstance(v, dict):
                    walk(name + ".", v)
                elif not isinstance(v, (list, tuple)):
                    rows.append({"metric": name, "value": v})
        walk("", result)
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out_json, result: dict, title: str, rows: list[dict] | None = None) -> str:
    """Write `result` to out_json, a markdown table to the same path with .md, print and return the table."""
    out_json = Path(out_json)
    if out_json.parent:
        os.makedirs(out_json.parent, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    table = f"## {title}\n\n{markdown_table(result, rows)}\n"
    out_json.with_suffix(".md").write_text(table)
    print(table)
    return table


def caption_eval_inputs(doc: str, argv=None):
    """The shared start of the caption-data CLIs (retrieval, K-Precision): parse --checkpoint/--out/
    --batch-size + the data flags, load the checkpoint and the data, and encode every image and caption.
    Returns (args, data description, captions per image, flat texts, similarity [images, texts])."""
    import sys

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="stage-1 run directory")
    parser.add_argument("--out", required=True, help="JSON report to write (a .md table goes next to it)")
    parser.add_argument("--batch-size", type=int, default=64)
    add_caption_data_args(parser)
    args = parser.parse_args(argv)
    try:
        model, tok = load_checkpoint(args.checkpoint)
        images, captions, _, data = load_caption_data(args, model.config.image_size)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    texts = [c for caps in captions for c in caps]
    similarity = encode_images(model, images, args.batch_size) @ encode_texts(model, tok, texts).t()
    return args, data, captions, texts, similarity

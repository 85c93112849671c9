"""A trained stage-2 run for evaluation: load the captioner from its directory and caption images with it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.images import SkipCounter, to_pixel_values
from ..data.prompts import FlamingoPrompts
from ..data.readers import IMAGE_EXTENSIONS, load_pairs
from ..models.flamingo import SparkFlamingo
from .report import read_json


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


@torch.no_grad()
def caption_images(model: SparkFlamingo, prompts: FlamingoPrompts, images: np.ndarray, batch_size: int = 16,
                   progress: bool = True, **generate_kwargs) -> list[str]:
    """uint8 images [N, S, S, 3] -> one caption each (prompt `<image>`, stop at `<|endofchunk|>`)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    captions: list[str] = []
    for start in tqdm(range(0, len(images), batch_size), desc="captioning", disable=not progress):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        px = to_pixel_values(batch, dtype)[:, None]
        prompt = prompts.generation_prompts(len(batch))
        new_ids = model.generate(px, prompt["input_ids"].to(device), prompt["attention_mask"].to(device),
                                 **generate_kwargs)
        captions.extend(prompts.decode(row) for row in new_ids)
    return captions


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
                   vision_path: str | None = None, lm_path: str | None = None,
                   **generate_kwargs) -> tuple[list[dict], SkipCounter]:
    """COCO results `[{"image_id", "caption"}]` for the images of a folder (or those a COCO file names), and the
    counter of unreadable images that were skipped."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"--image-dir {image_dir} is not a directory")
    model, prompts = load_captioner(checkpoint, device, vision_path, lm_path)
    records, out_ids = image_records(image_dir, annotations)
    records = records[:limit] if limit else records
    counter = SkipCounter(what="images")
    images, _, ids = load_pairs(records, model.vision.config.image_size, strict=strict, counter=counter)
    captions = caption_images(model, prompts, images, batch_size=batch_size, **generate_kwargs)
    return [{"image_id": out_ids[i], "caption": c} for i, c in zip(ids, captions)], counter

"""A trained stage-2 run for evaluation: load the captioner from its directory and caption images with it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.images import SkipCounter, to_pixel_values
from ..data.prompts import FlamingoPrompts
from ..data.readers import IMAGE_EXTENSIONS, load_pairs
from ..models import flamingo_io
from ..models.flamingo import FlamingoConfig, SparkFlamingo
from .report import read_json


def load_captioner(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[SparkFlamingo, FlamingoPrompts]:
    """Rebuild the captioner from its manifest: frozen vision + frozen LM from their recorded sources, then the
    trainable weights — after checking that both frozen parts hash to what the run was trained on."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / flamingo_io.MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a stage-2 run directory (no {flamingo_io.MANIFEST_NAME}); "
                                "train one with: accelerate launch stage2_vlm/train.py")
    manifest = json.loads(manifest_path.read_text())
    config = FlamingoConfig.from_dict(manifest["flamingo_config"])
    model = SparkFlamingo.from_pretrained_parts(config, manifest["vision"]["source"], manifest["lm_path"],
                                                tokenizer_path=str(run_dir / "tokenizer"))
    model.load_trainable(str(run_dir))
    model.eval().to(device)
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
                   batch_size: int = 16, strict: bool = False, **generate_kwargs) -> tuple[list[dict], SkipCounter]:
    """COCO results `[{"image_id", "caption"}]` for the images of a folder (or those a COCO file names), and the
    counter of unreadable images that were skipped."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise ValueError(f"--image-dir {image_dir} is not a directory")
    model, prompts = load_captioner(checkpoint)
    records, out_ids = image_records(image_dir, annotations)
    records = records[:limit] if limit else records
    counter = SkipCounter(what="images")
    images, _, ids = load_pairs(records, model.vision.config.image_size, strict=strict, counter=counter)
    captions = caption_images(model, prompts, images, batch_size=batch_size, **generate_kwargs)
    return [{"image_id": out_ids[i], "caption": c} for i, c in zip(ids, captions)], counter

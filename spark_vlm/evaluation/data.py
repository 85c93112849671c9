"""Evaluation data: the built-in test scenes, or COCO / Karpathy captions with their images."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..data.images import SkipCounter
from ..data.readers import load_pairs, read_coco_captions, read_karpathy
from ..data.scenes import SceneConfig, generate_scene
from .report import skip_summary


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


@dataclass
class CaptionData:
    """Where captioned images come from: a COCO captions file or a Karpathy split with their image folder, else
    the first `num_images` built-in test scenes. `strict` stops at the first bad image instead of skipping it."""

    annotations: str | None = None
    karpathy: str | None = None
    split: str = "test"  # of the Karpathy file
    image_dir: str | None = None
    num_images: int = 500  # built-in scenes only
    strict: bool = False


def load_caption_data(source: CaptionData, image_size: int) -> tuple[np.ndarray, list[list[str]], list[int], dict,
                                                                      list[dict] | None]:
    """(images uint8 [N, S, S, 3], captions per image, image ids, data description incl. skip counts, the scenes
    with their ground truth for the built-in scenes, else None)."""
    if source.annotations or source.karpathy:
        if not source.image_dir:
            raise ValueError("--image-dir is required with --annotations / --karpathy")
        if source.annotations and source.karpathy:
            raise ValueError("give --annotations or --karpathy, not both")
        records = (read_coco_captions(source.annotations, source.image_dir) if source.annotations
                   else read_karpathy(source.karpathy, source.image_dir, source.split))
        counter = SkipCounter(what="images")
        images, captions, ids = load_pairs(records, image_size, strict=source.strict, counter=counter)
        description = source.annotations or f"{source.karpathy} ({source.split})"
        if len(ids) == 0:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(counter.counts.items())) or "none listed"
            raise ValueError(f"{description}: no usable image with a caption in {source.image_dir} "
                             f"({len(records)} listed; skipped: {reasons})")
        return images, captions, ids, {"data": description, "skipped": skip_summary(counter)}, None
    scenes = builtin_scenes("test", source.num_images, image_size)
    return (scene_images(scenes, image_size), [s["captions"] for s in scenes], [s["image_id"] for s in scenes],
            {"data": f"built-in scenes, test split, {len(scenes)} images", "skipped": skip_summary(None)}, scenes)

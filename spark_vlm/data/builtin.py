"""The built-in scenes as arrays for the trainers: generated once, cached on disk, then loaded in seconds."""
from __future__ import annotations

from .pairs import scenes_to_arrays
from .scenes import SceneConfig, SceneDataset
from .tokenizer import DEFAULT_CACHE


def scene_arrays(split: str, num_images: int, image_size: int, min_objects: int = 1, max_objects: int = 6,
                 seed: int = 0, cache_dir: str | None = None):
    """(images uint8 [N, S, S, 3], captions [N][5], image_ids) for `split`; cached under `cache_dir`."""
    config = SceneConfig(image_size=image_size, min_objects=min_objects, max_objects=max_objects, seed=seed)
    dataset = SceneDataset(split, num_images, config, cache_dir=cache_dir or str(DEFAULT_CACHE / "scenes"))
    return scenes_to_arrays(dataset, f"loading {split} scenes")

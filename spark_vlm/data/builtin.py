"""The built-in scenes as arrays for the trainers: generated once, cached on disk, then loaded in seconds."""
from __future__ import annotations

from .pairs import scenes_to_arrays
from .scenes import SceneConfig, SceneDataset
from .text import object_question
from .tokenizer import DEFAULT_CACHE


def scene_arrays(split: str, num_images: int, image_size: int, min_objects: int = 1, max_objects: int = 6,
                 seed: int = 0, cache_dir: str | None = None):
    """(images uint8 [N, S, S, 3], captions [N][5], image_ids) for `split`; cached under `cache_dir`."""
    config = SceneConfig(image_size=image_size, min_objects=min_objects, max_objects=max_objects, seed=seed)
    dataset = SceneDataset(split, num_images, config, cache_dir=cache_dir or str(DEFAULT_CACHE / "scenes"))
    return scenes_to_arrays(dataset, f"loading {split} scenes")


def scene_shapes(split: str, num_images: int, image_size: int, min_objects: int = 1, max_objects: int = 6,
                 seed: int = 0, cache_dir: str | None = None) -> list[set[str]]:
    """The set of shape classes present in each scene (from the same cache as `scene_arrays`)."""
    config = SceneConfig(image_size=image_size, min_objects=min_objects, max_objects=max_objects, seed=seed)
    dataset = SceneDataset(split, num_images, config, cache_dir=cache_dir or str(DEFAULT_CACHE / "scenes"))
    return [{o["shape"] for o in dataset[i]["objects"]} for i in range(num_images)]


def add_object_questions(captions: list[list[str]], shapes: list[set[str]], per_image: int, seed: int,
                         vocabulary: tuple[str, ...]) -> list[list[str]]:
    """Optional stage-2 training text: yes/no object questions from the ground truth, in the POPE probe's
    format ("Question: Is there a star in the image? Answer: yes"), half present and half absent objects,
    appended to each image's captions (so the per-epoch caption choice sometimes picks one)."""
    import random

    rng = random.Random(seed)
    out = []
    for caps, present in zip(captions, shapes):
        extra = []
        absent = sorted(set(vocabulary) - present)
        for q in range(per_image):
            pool, answer = (sorted(present), "yes") if q % 2 == 0 else (absent, "no")
            if not pool:
                continue
            obj = rng.choice(pool)
            extra.append(f"Question: {object_question(obj)} Answer: {answer}")
        out.append(list(caps) + extra)
    return out

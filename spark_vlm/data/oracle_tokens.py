"""Ground-truth object tokens of the built-in scenes: the input of the oracle vision tower (models/oracle_vision.py).

A scene becomes `max_objects + 1` feature vectors of OBJECT_TOKEN_DIM numbers: one per object (one-hot shape,
one-hot colour, one-hot size, centre x and y in [0, 1], an "is an object" flag), zero rows for absent objects,
and a last row for the background kind (one-hot). Everything a true caption states (counts, colours, sizes,
left/right/above/below, the background) can be read from these rows exactly, so a captioner fed them shows what
the stage-2 recipe can learn when the vision tower sees perfectly. All zeros is the blank input: no objects.
"""
from __future__ import annotations

import numpy as np

from .scene_vocab import COLORS, SHAPES, SIZES
from .scenes import BACKGROUNDS

_COLOR_NAMES = tuple(COLORS)
# Column layout of one token.
_SHAPE = 0
_COLOR = _SHAPE + len(SHAPES)
_SIZE = _COLOR + len(_COLOR_NAMES)
_CENTRE = _SIZE + len(SIZES)
_IS_OBJECT = _CENTRE + 2
_BACKGROUND = _IS_OBJECT + 1
OBJECT_TOKEN_DIM = _BACKGROUND + len(BACKGROUNDS)


def scene_tokens(objects: list[dict], background: str, image_size: int, max_objects: int) -> np.ndarray:
    """float32 [max_objects + 1, OBJECT_TOKEN_DIM] for one scene (objects in the scene's painter's order)."""
    if len(objects) > max_objects:
        raise ValueError(f"a scene has {len(objects)} objects but the oracle holds at most {max_objects}")
    tokens = np.zeros((max_objects + 1, OBJECT_TOKEN_DIM), np.float32)
    for row, obj in zip(tokens, objects):
        row[_SHAPE + SHAPES.index(obj["shape"])] = 1
        row[_COLOR + _COLOR_NAMES.index(obj["color"])] = 1
        row[_SIZE + SIZES.index(obj["size"])] = 1
        row[_CENTRE:_CENTRE + 2] = np.asarray(obj["center"], np.float32) / image_size
        row[_IS_OBJECT] = 1
    tokens[-1, _BACKGROUND + BACKGROUNDS.index(background)] = 1
    return tokens


def scenes_tokens(scenes, max_objects: int) -> np.ndarray:
    """float32 [N, max_objects + 1, OBJECT_TOKEN_DIM] for a SceneDataset (read from its metadata, no pixels)."""
    size = scenes.config.image_size
    return np.stack([scene_tokens(m["objects"], m["background"], size, max_objects)
                     for m in (scenes.meta(i) for i in range(len(scenes)))])

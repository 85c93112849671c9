"""Words -> regions, scored against ground-truth masks: how much of a word's token-to-patch weight lies on the
object the word names (mass-in-mask), and whether its heaviest patch touches that object (pointing).

Both are read on the patch grid: a patch counts by the fraction of its pixels inside the object's mask, so small
objects and patches on an object's edge are scored exactly. The caption words that name a scene's objects
(named_words) are found here too, so the grounding evaluation and the periodic stage-1 evaluation score the
same words. Pure functions over arrays; the protocol that makes the weights lives in
spark_vlm/evaluation/grounding.py.
"""
from __future__ import annotations

import numpy as np

from ..data.scene_vocab import COLORS, PLURALS, WORD_TO_SHAPE
from ..data.tokenizer import WORD_BOUNDARY


def patch_coverage(mask: np.ndarray, grid: int) -> np.ndarray:
    """[P] fraction of each patch's pixels inside the boolean `mask` [H, W], patches in row-major order (the
    ViT's order) on a `grid` x `grid` layout. H and W must be multiples of `grid`."""
    h, w = mask.shape
    if h % grid or w % grid:
        raise ValueError(f"a {h}x{w} mask does not split into a {grid}x{grid} patch grid")
    blocks = mask.reshape(grid, h // grid, grid, w // grid).astype(np.float64)
    return blocks.mean(axis=(1, 3)).reshape(-1)


def mass_in_mask(weights: np.ndarray, coverage: np.ndarray) -> float:
    """Share of the (non-negative) weights [P] on the object: sum_p w_p * coverage_p / sum_p w_p."""
    total = float(weights.sum())
    if total <= 0:
        raise ValueError("the weights sum to zero")
    return float((weights * coverage).sum()) / total


def pointing_hit(weights: np.ndarray, coverage: np.ndarray) -> bool:
    """Whether the heaviest patch (the first one on ties) touches the object."""
    return bool(coverage[int(np.argmax(weights))] > 0)


def uniform_baseline(coverage: np.ndarray) -> tuple[float, float]:
    """(mass-in-mask, pointing) in expectation for weights that ignore the image: the object's share of the
    image, and the share of patches that touch it (the chance that a random patch does)."""
    return float(coverage.mean()), float((coverage > 0).mean())


def any_object_baseline(coverage: np.ndarray, objects: np.ndarray) -> tuple[float, float]:
    """(mass-in-mask, pointing) of a readout that knows where the objects are but not which one the word names:
    weights = each patch's share of pixels in *any* object (`objects`, the coverage of all the scene's objects).
    Pointing is its expectation over the tied heaviest patches. A model that only separates objects from the
    background scores this, so a word-specific grounding must beat it, not just uniform weights."""
    top = objects >= objects.max()
    return mass_in_mask(objects, coverage), float((coverage[top] > 0).mean())


_SINGULAR = {plural: word for word, plural in PLURALS.items()}


def named_objects(word: str, objects: list[dict]) -> tuple[str, list[dict]] | None:
    """("shape" | "colour", the objects of the scene that `word` names), or None for any other word."""
    shape = WORD_TO_SHAPE.get(word) or WORD_TO_SHAPE.get(_SINGULAR.get(word, ""))
    if shape:
        return "shape", [o for o in objects if o["shape"] == shape]
    if word in COLORS:
        return "colour", [o for o in objects if o["color"] == word]
    return None


def words_of(pieces: list[str]) -> list[tuple[str, list[int]]]:
    """Group token pieces into words: [(word, token positions)], the word lower-cased without punctuation."""
    words: list[tuple[str, list[int]]] = []
    for i, piece in enumerate(pieces):
        starts = piece.startswith(WORD_BOUNDARY) or not words
        text = piece.lstrip("".join(WORD_BOUNDARY))
        if starts:
            words.append((text, [i]))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + [i])
    return [("".join(c for c in w.lower() if c.isalnum()), idx) for w, idx in words]


def named_words(pieces: list[str], objects: list[dict], grid: int) -> list[tuple[str, list[int], np.ndarray]]:
    """For each word of a caption (its token pieces) that names a shape class or colour present among `objects`:
    ("shape" | "colour", its token positions, the patch coverage [P] of the union of the objects it names)."""
    found = []
    for word, positions in words_of(pieces):
        named = named_objects(word, objects)
        if named is not None and named[1]:
            kind, hits = named
            found.append((kind, positions, patch_coverage(np.any([o["mask"] for o in hits], axis=0), grid)))
    return found

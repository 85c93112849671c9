"""Words -> regions, scored against ground-truth masks: how much of a word's token-to-patch weight lies on the
object the word names (mass-in-mask), and whether its heaviest patch touches that object (pointing).

Both are read on the patch grid: a patch counts by the fraction of its pixels inside the object's mask, so small
objects and patches on an object's edge are scored exactly. Pure functions over arrays; the protocol that makes
the weights lives in spark_vlm/evaluation/grounding.py.
"""
from __future__ import annotations

import numpy as np


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

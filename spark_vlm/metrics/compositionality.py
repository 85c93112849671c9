"""Scores of the compositionality benchmarks (SugarCrepe, MMVP-VLM): strict pairwise preferences.

Strict everywhere: a preference counts only when the right score is strictly above the wrong one, so a tie
(e.g. a model that cannot tell two texts or two images apart) is wrong, never a coin flip won by luck.
Pure functions: arrays in, numbers out (percent).
"""
from __future__ import annotations

import numpy as np


def strict_wins(right, wrong) -> np.ndarray:
    """Bool [N]: right[i] > wrong[i] (a tie is a loss)."""
    right, wrong = np.asarray(right, dtype=np.float64), np.asarray(wrong, dtype=np.float64)
    if right.shape != wrong.shape or right.ndim != 1:
        raise ValueError(f"right {right.shape} and wrong {wrong.shape} must be equal-length vectors")
    return right > wrong


def percent(hits) -> float:
    hits = np.asarray(hits, dtype=bool)
    return float(100.0 * hits.mean()) if hits.size else float("nan")


def shorter_caption_wins(positives: list[str], negatives: list[str]) -> np.ndarray:
    """Bool [N]: the text-only heuristic "the caption with fewer words is the true one" (a tie is a loss)."""
    return strict_wins([-len(p.split()) for p in positives], [-len(n.split()) for n in negatives])


def mmvp_pair_correct(sims) -> np.ndarray:
    """Bool [N] from sims [N, 2, 2] = cosine(text t, image i) at [n, t, i], where text t describes image t.

    As MMVP-VLM scores a pair: correct only when each of the two texts prefers its own image (strictly).
    """
    sims = np.asarray(sims, dtype=np.float64)
    if sims.ndim != 3 or sims.shape[1:] != (2, 2):
        raise ValueError(f"sims must be [N, 2, 2], got {sims.shape}")
    return (sims[:, 0, 0] > sims[:, 0, 1]) & (sims[:, 1, 1] > sims[:, 1, 0])


def grouped_percent(hits, groups: list[str]) -> tuple[dict, float]:
    """({group: percent of hits}, the mean of the group percents) in first-seen group order."""
    hits = np.asarray(hits, dtype=bool)
    if len(groups) != len(hits):
        raise ValueError(f"{len(groups)} groups for {len(hits)} results")
    names = list(dict.fromkeys(groups))
    per = {g: percent(hits[[x == g for x in groups]]) for g in names}
    return per, (float(np.mean(list(per.values()))) if per else float("nan"))

"""Shape-swapped hard-negative captions for stage 1 (NegCLIP-style, Yuksekgonul et al. 2023), built-in scenes only.

Why: on the built-in scenes a batch of 64 is told apart by colours, counts and backgrounds alone, so the global
contrastive loss never needs *which shape*: linear probes on the patch features of trained 400-step backbones
(CLIP, SPARK, FILIP) name an object's shape no better than chance, and stage 2 then cannot read shapes either. A
negative caption that differs from the true one only in one shape word ("two red circles" -> "two red stars")
can be rejected by shape alone. Each image's negative is one more text column in its image -> text softmax (as
NegCLIP adds its negatives to the text side of the batch); the text -> image side is unchanged.

Every negative is checked to be *false* of its scene with the scenes' own truth reader (`scene_truth.holds`): a
swap that stays true (a partial caption naming one red star, when the scene also holds exactly one red star) is
not a negative. Captions without a shape word (colour and size captions) get none.
"""
from __future__ import annotations

import re

import numpy as np

from .scene_truth import holds, parse_caption
from .scene_vocab import PLURALS, SHAPE_SYNONYMS, SHAPES, WORD_TO_SHAPE

_PLURAL_TO_WORD = {p: w for w, p in PLURALS.items()}
_SHAPE_WORD = re.compile(r"\b(" + "|".join(sorted({*WORD_TO_SHAPE, *PLURALS.values()}, key=len, reverse=True))
                         + r")\b")


def shape_swaps(caption: str) -> list[str]:
    """Every caption that replaces one shape word by a word of another shape class, keeping its number (singular or
    plural). The replacement is the other class's first synonym (its canonical name)."""
    out = []
    for m in _SHAPE_WORD.finditer(caption):
        word = m.group(1)
        plural = word in _PLURAL_TO_WORD
        old = WORD_TO_SHAPE[_PLURAL_TO_WORD[word] if plural else word]
        for new in SHAPES:
            if new == old:
                continue
            name = SHAPE_SYNONYMS[new][0]
            out.append(caption[: m.start()] + (PLURALS[name] if plural else name) + caption[m.end():])
    return out


def shape_swap_negative(caption: str, kind: str, scene: dict, relation_margin: float,
                        rng: np.random.Generator) -> str | None:
    """One shape-swapped caption that is false of `scene` (objects with colour, shape, size, centre), drawn with
    `rng`; None when the caption names no shape or every swap stays true."""
    candidates = shape_swaps(caption)
    for j in rng.permutation(len(candidates)):
        if not holds(parse_caption(candidates[j], kind), scene, relation_margin):
            return candidates[j]
    return None


def scene_negatives(metas: list[dict], relation_margin: float, seed: int) -> list[list[str | None]]:
    """For every scene record (`SceneDataset.meta`), one negative per caption (None where there is none);
    deterministic in `seed`."""
    out = []
    for i, meta in enumerate(metas):
        rng = np.random.default_rng([seed, i])
        out.append([shape_swap_negative(c, k, meta, relation_margin, rng)
                    for c, k in zip(meta["captions"], meta["caption_kinds"])])
    return out

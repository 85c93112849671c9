"""Duplicate-aware retrieval recall: identical caption strings count as the same answer.

With template captions (the built-in scenes: "one red circle" describes many images) the standard
protocol (retrieval_recall) punishes a model for retrieving another image's copy of a caption that is
word for word true of the query image too. Here a hit is judged by the caption *string*:

* image -> text: a retrieved text is correct if its string equals one of the query image's captions;
* text -> image: a retrieved image is correct if any of its captions equals the query text's string.

Strings are compared after lower-casing and collapsing whitespace. Ties are broken pessimistically
(a correct item tied with a wrong one is ranked below it), as in retrieval_recall. Pure function.
"""
from __future__ import annotations

import numpy as np
import torch

from .retrieval import recall_at_k


def _normalise(caption: str) -> str:
    return " ".join(caption.lower().split())


def best_positive_rank(sim: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per row: how many negatives score >= the best positive (0 = a positive is ranked first)."""
    best = torch.where(positive, sim, torch.full_like(sim, -torch.inf)).max(dim=1).values
    negatives = torch.where(positive, torch.full_like(sim, -torch.inf), sim)
    return (negatives >= best[:, None]).sum(dim=1)


def dedup_retrieval_recall(similarity, captions, text_to_image, ks=(1, 5, 10), chunk: int = 1024) -> dict:
    """`similarity` [num_images, num_texts]; `captions[j]` the string of text j; `text_to_image[j]` its image.

    Returns percentages keyed like retrieval_recall (image_to_text_R@K, text_to_image_R@K, R@K), plus
    `num_duplicate_texts`: how many texts share their string with a text of another image.
    Rows/columns are processed in chunks so a 5k x 25k COCO matrix never needs an I x T float64 copy.
    """
    sim = torch.as_tensor(similarity).detach().cpu().float()
    t2i = np.asarray(text_to_image, dtype=np.int64)
    num_images, num_texts = sim.shape
    if t2i.shape != (num_texts,) or len(captions) != num_texts:
        raise ValueError(f"need {num_texts} captions and text_to_image entries, got "
                         f"{len(captions)} and {t2i.shape[0] if t2i.ndim else 0}")
    if num_texts and (t2i.min() < 0 or t2i.max() >= num_images):
        raise ValueError("text_to_image holds an index outside the similarity matrix")

    # Map each distinct string to an id; has_string[i, s] = image i has a caption with string s.
    string_ids: dict[str, int] = {}
    sid = np.array([string_ids.setdefault(_normalise(c), len(string_ids)) for c in captions], dtype=np.int64)
    has_string = torch.zeros((num_images, len(string_ids)), dtype=torch.bool)
    has_string[torch.as_tensor(t2i), torch.as_tensor(sid)] = True
    sid_t = torch.as_tensor(sid)

    # positive[i, j] = has_string[i, sid[j]]: image i "owns" the string of text j.
    rank_i2t, rank_t2i = [], []
    for start in range(0, num_images, chunk):
        rank_i2t.append(best_positive_rank(sim[start:start + chunk], has_string[start:start + chunk][:, sid_t]))
    for start in range(0, num_texts, chunk):
        cols = slice(start, start + chunk)
        rank_t2i.append(best_positive_rank(sim[:, cols].t(), has_string[:, sid_t[cols]].t()))
    rank_i2t = torch.cat(rank_i2t) if rank_i2t else torch.zeros(0, dtype=torch.long)
    rank_t2i = torch.cat(rank_t2i) if rank_t2i else torch.zeros(0, dtype=torch.long)
    out = recall_at_k(rank_i2t[has_string.any(dim=1)], rank_t2i, ks)
    owners = has_string.sum(dim=0)  # how many images own each string
    out["num_duplicate_texts"] = int((owners[sid_t] > 1).sum().item()) if num_texts else 0
    return out

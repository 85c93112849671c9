"""Zero-shot retrieval recall (image->text and text->image R@K) from a similarity matrix.

Pure functions over arrays; an image may have several captions (COCO has 5). Image->text counts a hit
when *any* of the image's captions is in the top K (the standard COCO/Flickr protocol, as CLIP_benchmark).
"""
from __future__ import annotations

import numpy as np
import torch


def retrieval_recall(similarity, text_to_image, ks=(1, 5, 10)) -> dict[str, float]:
    """`similarity` [num_images, num_texts]; `text_to_image[j]` = index of the image text j describes.

    Returns percentages: image_to_text_R@K, text_to_image_R@K and their mean R@K. Ties are broken
    pessimistically (a correct item tied with a wrong one does not count as ranked above it).
    """
    sim = torch.as_tensor(similarity).detach().cpu().float()  # fp32: 5k x 25k COCO is 0.5 GB, not 1
    t2i = torch.as_tensor(np.asarray(text_to_image), dtype=torch.long)
    num_images, num_texts = sim.shape
    if t2i.shape != (num_texts,):
        raise ValueError(f"text_to_image has shape {tuple(t2i.shape)}, expected ({num_texts},)")
    if num_texts and (t2i.min() < 0 or t2i.max() >= num_images):
        raise ValueError("text_to_image holds an index outside the similarity matrix")

    # text -> image: rank of the correct image = number of images scoring >= it, minus one.
    correct = sim[t2i, torch.arange(num_texts)]  # [T]
    rank_t2i = (sim >= correct[None, :]).sum(dim=0) - 1  # [T]

    # image -> text: best rank over the image's own captions.
    positive = torch.zeros_like(sim, dtype=torch.bool)
    positive[t2i, torch.arange(num_texts)] = True
    best_pos = torch.where(positive, sim, torch.full_like(sim, -torch.inf)).max(dim=1).values  # [I]
    rank_i2t = (torch.where(positive, torch.full_like(sim, -torch.inf), sim) >= best_pos[:, None]).sum(dim=1)
    return recall_at_k(rank_i2t[positive.any(dim=1)], rank_t2i, ks)


def recall_at_k(rank_i2t: torch.Tensor, rank_t2i: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """0-based ranks of the first correct item (images that have captions; all texts) -> percentages."""
    out = {}
    for k in ks:
        i2t = 100.0 * (rank_i2t < k).double().mean().item() if len(rank_i2t) else float("nan")
        t2i = 100.0 * (rank_t2i < k).double().mean().item() if len(rank_t2i) else float("nan")
        out[f"image_to_text_R@{k}"] = i2t
        out[f"text_to_image_R@{k}"] = t2i
        out[f"R@{k}"] = (i2t + t2i) / 2
    return out


def two_way(recall, i2t, t2i, *args) -> dict:
    """A recall function's image -> text numbers from the similarity `i2t` and its text -> image numbers from `t2i`
    (both [images, texts]; FILIP ranks each direction with its own late interaction). One call when they are the
    same tensor."""
    if i2t is t2i:
        return recall(i2t, *args)
    out, backward = recall(i2t, *args), recall(t2i, *args)
    out.update({k: v for k, v in backward.items() if k.startswith("text_to_image")})
    for k in [k for k in out if k.startswith("R@")]:
        out[k] = (out[f"image_to_text_{k}"] + out[f"text_to_image_{k}"]) / 2
    return out

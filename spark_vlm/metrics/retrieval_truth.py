"""Truth-aware retrieval recall, per caption kind, each number beside what a perfect model could reach.

With template captions one caption is true of several images. The standard text->image R@1 counts only the
caption's own image, so even a perfect model (one that scores exactly the images a caption is true of highest)
cannot tell those images apart: its expected R@1 is 1/k for a caption true of k images (the *ceiling*). The
truth-aware R@1 counts a hit when the top image is any image the caption is true of (ceiling 100%); its chance
level is k / #images (a random image). Pure function: the truth matrix comes from the ground truth
(data/scene_truth.py for the built-in scenes). Ties are broken pessimistically, as in retrieval_recall.
"""
from __future__ import annotations

import numpy as np
import torch

from .retrieval_dedup import best_positive_rank


def truth_aware_recall(similarity, truth, text_to_image, kinds) -> dict[str, dict[str, float]]:
    """`similarity` [images, texts]; `truth[i, j]`: text j is true of image i (its own image included);
    `text_to_image[j]`: text j's own image; `kinds[j]`: its caption kind.

    Returns {kind (in order of first appearance), then "all": {num_texts, R@1, R@1_ceiling, R@1_chance,
    truth_R@1, truth_R@1_ceiling, truth_R@1_chance}} (text->image, percentages), and under "all" also the
    image->text truth_R@1 (the top caption is true of the image) as i2t_truth_R@1.
    """
    sim = torch.as_tensor(similarity).detach().cpu().float()
    true = torch.as_tensor(np.ascontiguousarray(truth, dtype=bool))
    t2i = torch.as_tensor(np.asarray(text_to_image, dtype=np.int64))
    num_images, num_texts = sim.shape
    if true.shape != sim.shape or t2i.shape != (num_texts,) or len(kinds) != num_texts:
        raise ValueError(f"need a truth matrix of shape {tuple(sim.shape)} and {num_texts} own images and kinds")
    if num_images == 0 or num_texts == 0:
        raise ValueError("truth-aware retrieval needs at least one image and one caption")
    if not bool(true[t2i, torch.arange(num_texts)].all()):
        raise ValueError("a caption is not true of its own image: the ground truth and the captions disagree")

    own = torch.zeros_like(true)
    own[t2i, torch.arange(num_texts)] = True
    hit = (best_positive_rank(sim.t(), own.t()) == 0).double()         # standard: the own image ranks first
    truth_hit = (best_positive_rank(sim.t(), true.t()) == 0).double()  # any image the caption is true of
    k = true.sum(dim=0).double()                                      # images each caption is true of

    def row(mask: torch.Tensor) -> dict[str, float]:
        pct = lambda x: 100.0 * x[mask].mean().item()
        return {"num_texts": int(mask.sum()), "R@1": pct(hit), "R@1_ceiling": pct(1.0 / k),
                "R@1_chance": 100.0 / num_images, "truth_R@1": pct(truth_hit),
                "truth_R@1_ceiling": pct((k > 0).double()), "truth_R@1_chance": pct(k / num_images)}

    kinds = list(kinds)
    out = {kind: row(torch.as_tensor([x == kind for x in kinds])) for kind in dict.fromkeys(kinds)}
    out["all"] = row(torch.ones(num_texts, dtype=torch.bool))
    has_text = true.any(dim=1)
    i2t = (best_positive_rank(sim, true) == 0).double()
    out["all"]["i2t_truth_R@1"] = 100.0 * i2t[has_text].mean().item()
    return out

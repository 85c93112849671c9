"""Zero-shot classification: a text classifier from class-name prompts, and top-k / per-class metrics.

The protocol (the SPARC paper, as CLIP): each class name is written into one or more prompt templates
("a photo of a {}."), the text embeddings of a class's templates are L2-normalised, averaged and
re-normalised into one class vector, and an image is assigned the class with the highest cosine.

Pure functions: arrays in, numbers out.
"""
from __future__ import annotations

import numpy as np
import torch


def zero_shot_classifier(class_text_embeds) -> torch.Tensor:
    """[C, T, D] (T templates per class) or [C, D] text embeddings -> [C, D] unit class vectors.

    Each template embedding is normalised *before* averaging so that no template dominates by norm;
    the mean is normalised again so that logits are cosines.
    """
    emb = torch.as_tensor(class_text_embeds).detach().cpu().float()
    if emb.dim() == 2:
        emb = emb[:, None, :]
    if emb.dim() != 3:
        raise ValueError(f"expected [C, T, D] or [C, D] text embeddings, got shape {tuple(emb.shape)}")
    emb = torch.nn.functional.normalize(emb, dim=-1)
    return torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)


def classification_metrics(logits, labels, ks=(1, 5)) -> dict:
    """Top-k accuracy (percent) and mean per-class recall (percent, of top-1) from logits [N, C].

    Ties are broken pessimistically, as in retrieval_recall: the true class is ranked below every other
    class with an equal score, so a constant classifier never scores by luck. With fewer than k classes,
    acc@k is 100 (every class is within the top k). Mean per-class recall averages over the classes that
    have at least one sample, so a class missing from the evaluation set does not count as 0.
    """
    scores = torch.as_tensor(logits).detach().cpu().double()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n, num_classes = scores.shape
    if y.shape != (n,):
        raise ValueError(f"labels has shape {tuple(y.shape)}, expected ({n},)")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError("a label is outside 0..C-1")

    true_score = scores[torch.arange(n), y]
    # rank 0 = best; every other class scoring >= the true class is ranked above it
    rank = (scores >= true_score[:, None]).sum(dim=1) - 1
    out: dict = {}
    for k in ks:
        out[f"acc@{k}"] = 100.0 * (rank < k).double().mean().item() if n else float("nan")

    top1 = rank == 0
    per_class = []
    for c in range(num_classes):
        members = y == c
        per_class.append(100.0 * top1[members].double().mean().item() if members.any() else None)
    present = [r for r in per_class if r is not None]
    out["mean_per_class_recall"] = float(np.mean(present)) if present else float("nan")
    out["per_class_recall"] = per_class
    out["num_samples"] = int(n)
    return out

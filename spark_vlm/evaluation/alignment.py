"""Where each caption token looks: SPARK's sparse token-to-patch alignment weights a_lp (`sparc_alignment`:
min-max normalised similarities, sparsified at 1/P, L1-renormalised) over the patch grid, upsampled to the image.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import to_pixel_values
from ..losses import sparc_alignment
from .stage1_run import device


@torch.no_grad()
def alignment_maps(model, tokenizer, image: np.ndarray, caption: str) -> tuple[torch.Tensor, list[str]]:
    """Per real token of `caption`, its alignment weights over the uint8 image [H, W, 3]: [L, H, W], and the
    token names."""
    px = to_pixel_values(torch.from_numpy(np.array(image[None])).to(device()))  # a writable copy
    enc = tokenizer([caption], model.config.max_text_len)
    ids, mask = enc["input_ids"].to(device()), enc["attention_mask"].to(device())
    tokens, token_mask = model.token_embeddings(ids, mask)
    _, weights = sparc_alignment(model.patch_embeddings(px), tokens, token_mask)  # [1, L, P]
    n = int(mask.sum())
    side = model.config.image_size // model.config.patch_size
    grid = weights[0, :n].reshape(n, 1, side, side).cpu()
    maps = F.interpolate(grid, size=image.shape[:2], mode="bilinear", align_corners=False)[:, 0]
    return maps, tokenizer.pieces(ids[0, :n].tolist())


def draw_overlay(ax, image: np.ndarray, heat: torch.Tensor, title: str) -> None:
    """One alignment map laid over its image on a matplotlib axis (eval/visualize.py, the study's heatmap grid)."""
    ax.imshow(image)
    ax.imshow(heat.numpy(), cmap="inferno", alpha=0.6, vmin=0.0, vmax=max(float(heat.max()), 1e-8))
    ax.set_title(title, fontsize=9)
    ax.axis("off")

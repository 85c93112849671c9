"""Stage 2's frozen vision features, each training image's computed once.

The vision tower is frozen and in eval mode, and the built-in data has no augmentation, so an image's features are
the same at every step. `FrozenFeatureCache` computes them the first time the image is drawn and reads them back
after: from the second epoch on the tower does not run (the default 4000 x 32 steps over 30k scenes are ~4.3
epochs; the tower is ~28% of an fp32 step on 2 CPU threads). Nothing else changes: the perceiver receives the same
tensor, bit for bit when a batch's images are all new or all cached, and to the float rounding of a smaller
forward when a batch mixes the two (tests/test_feature_cache.py).

It holds [num_images, P, width] in the tower's dtype (0.92 GiB in fp32 for 30k tiny-ViT images) and stays off when
that exceeds `data.feature_cache_gb`; each process keeps its own.
"""
from __future__ import annotations

import torch

from ..data.images import to_pixel_values


class FrozenFeatureCache:
    def __init__(self, num_images: int, budget_gb: float, say=print):
        self.num_images = num_images
        self.budget_bytes = budget_gb * 2**30
        self.enabled = budget_gb > 0
        self.store: torch.Tensor | None = None  # [num_images, P, width], allocated at the first batch
        self.filled = torch.zeros(num_images, dtype=torch.bool)
        self.say = say

    def features(self, model, images: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        """The frozen features [B, 1, P, width] of the batch's images (`model`: the unwrapped SparkFlamingo;
        `index`: the images' dataset indices), computing only those not seen before; None when the cache is off
        (the caller then passes the pixels)."""
        if not self.enabled:
            return None
        index = index.cpu()
        missing = ~self.filled[index]
        if missing.any():
            dtype = next(model.vision.parameters()).dtype
            new = model.frozen_features(to_pixel_values(images[missing.to(images.device)], dtype))[:, 0]
            if self.store is None and not self.allocate(new):
                return None
            self.store[index[missing]] = new.to(self.store.device)
            self.filled[index[missing]] = True
        return self.store[index].to(images.device)[:, None]

    def allocate(self, example: torch.Tensor) -> bool:
        """Allocate the store for features shaped like `example`'s rows, if it fits the budget; says which."""
        need = self.num_images * example[0].numel() * example.element_size()
        self.enabled = need <= self.budget_bytes
        if self.enabled:
            self.store = torch.empty(self.num_images, *example.shape[1:], dtype=example.dtype)
        self.say(f"frozen vision features of the {self.num_images} training images: {need / 2**30:.2f} GB, "
                 + (f"kept in memory after each image's first draw (data.feature_cache_gb={self.budget_bytes / 2**30:g})"
                    if self.enabled else
                    f"over data.feature_cache_gb={self.budget_bytes / 2**30:g}, so the tower runs at every step"))
        return self.enabled

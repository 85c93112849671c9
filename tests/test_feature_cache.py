"""Stage 2's frozen-feature cache (training/feature_cache.py) against the tower run at every step, and stage 1's
dynamic caption padding against the full-length batch: the same losses and gradients, less work."""
from __future__ import annotations

import numpy as np
import torch

from spark_vlm.data.images import to_pixel_values
from spark_vlm.data.pairs import CaptionedImages
from spark_vlm.data.prompts import FlamingoPrompts
from spark_vlm.training.feature_cache import FrozenFeatureCache
from spark_vlm.training.stage2 import stage2_loss
from test_flamingo import CAPTIONS, make_model, set_gates, single_thread  # noqa: F401 (autouse fixture)


def tiny_batches(model, n_images: int = 12, batch: int = 4):
    """The training batches of two epochs over `n_images` random scenes, each epoch in its own order."""
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (n_images, 16, 16, 3), dtype=np.uint8)
    data = CaptionedImages(images, [[c] for c in CAPTIONS[:n_images]], list(range(n_images)),
                           tokenizer=FlamingoPrompts(model.tokenizer), max_len=24)
    collate = torch.utils.data.default_collate
    return [collate([data[int(i)] for i in order[k:k + batch]])
            for order in (g.permutation(n_images), g.permutation(n_images)) for k in range(0, n_images, batch)]


class CountingTower:
    """Counts the images the frozen tower is run on."""

    def __init__(self, model):
        self.images, self.frozen_features = 0, model.frozen_features
        model.frozen_features = self

    def __call__(self, pixel_values):
        self.images += pixel_values.shape[0]
        return self.frozen_features(pixel_values)


def test_cached_features_give_the_same_losses_and_gradients_and_run_the_tower_once_per_image():
    model = make_model()
    set_gates(model, 0.7)  # open gates: the image reaches the loss
    batches = tiny_batches(model)
    messages = []
    cache = FrozenFeatureCache(12, budget_gb=1.0, say=messages.append)
    counter = CountingTower(model)
    for batch in batches:
        model.zero_grad()
        cached = stage2_loss(model, batch, cache, model)["loss"]
        cached.backward()
        grads = [p.grad.clone() for p in model.trainable_parameters()]
        model.zero_grad()
        plain = stage2_loss(model, batch)["loss"]  # the tower on the pixels, as without a cache
        plain.backward()
        torch.testing.assert_close(cached, plain, rtol=0, atol=0)
        for got, want in zip(grads, (p.grad for p in model.trainable_parameters())):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The plain calls ran the tower on all 24 draws, the cache on each of the 12 images once.
    assert counter.images == 24 + 12
    assert cache.filled.all() and len(messages) == 1 and "kept in memory" in messages[0]


def test_a_batch_of_cached_and_new_images_matches_the_tower():
    model = make_model()
    batches = tiny_batches(model)
    cache = FrozenFeatureCache(12, budget_gb=1.0, say=lambda _: None)
    first = batches[0]
    cache.features(model, first["images"][:2], first["index"][:2])  # two of the four seen before
    counter = CountingTower(model)
    got = cache.features(model, first["images"], first["index"])
    assert counter.images == 2
    want = counter.frozen_features(to_pixel_values(first["images"]))
    assert got.shape == want.shape == (4, 1, 4, 32)
    torch.testing.assert_close(got, want)  # rounding of the two-image forward at most


def test_over_budget_or_off_runs_the_tower_at_every_step():
    model = make_model()
    batch = tiny_batches(model)[0]
    messages = []
    over = FrozenFeatureCache(12, budget_gb=1e-9, say=messages.append)
    assert over.features(model, batch["images"], batch["index"]) is None
    assert not over.enabled and over.store is None and "over data.feature_cache_gb=1e-09" in messages[0]
    assert over.features(model, batch["images"], batch["index"]) is None and len(messages) == 1  # said once
    off = FrozenFeatureCache(12, budget_gb=0, say=messages.append)
    counter = CountingTower(model)
    assert off.features(model, batch["images"], batch["index"]) is None and counter.images == 0


def test_stage1_runs_the_text_tower_over_the_longest_caption_with_the_same_losses_and_gradients():
    from spark_vlm.losses import caption_word_idf
    from spark_vlm.models.dual_encoder import SparkConfig, SparkModel
    from spark_vlm.training import stage1
    from spark_vlm.training.config import load_config
    from spark_vlm.training.stage1_config import Stage1Config

    torch.manual_seed(0)
    model = SparkModel(SparkConfig(image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
                                   vocab_size=9, max_text_len=8, text_width=16, text_layers=2, text_heads=2,
                                   embed_dim=8, caption_word_head=True))
    ids = torch.tensor([[1, 2, 3, 0, 0, 0, 0, 0], [6, 2, 7, 4, 1, 0, 0, 0], [1, 3, 0, 0, 0, 0, 0, 0]])
    neg = torch.tensor([[1, 5, 3, 0, 0, 0, 0, 0], [6, 2, 8, 4, 1, 3, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]])
    batch = {"images": torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8), "input_ids": ids,
             "attention_mask": ids != 0, "neg_input_ids": neg, "neg_attention_mask": neg != 0,
             "has_negative": torch.tensor([True, True, False]), "index": torch.arange(3),
             "word_ids": torch.tensor([[1, 2, 3, -1], [6, 2, 7, 4], [1, 3, -1, -1]])}
    idf = caption_word_idf(ids, ids != 0, 9, (0,))
    cfg = load_config(Stage1Config, None, ["hard_negatives=shape_swap", "fine_centre_positions=true",
                                           "lambda_words=2"])
    lengths = []
    model.text_model.register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1]))

    def loss_and_grads(trim):
        original = stage1.trim_right_padding
        stage1.trim_right_padding = original if trim else (lambda b, **_: b)
        try:
            model.zero_grad()
            out = stage1.stage1_loss(cfg, model, dict(batch), word_idf=idf)
        finally:
            stage1.trim_right_padding = original
        out["loss"].backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = loss_and_grads(trim=False)
    trimmed, trimmed_grads = loss_and_grads(trim=True)
    assert lengths == [8, 6]  # the negatives' longest (6) sets the length of both caption sets
    for key in full:
        torch.testing.assert_close(trimmed[key], full[key])
    assert trimmed_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(trimmed_grads[name], full_grads[name], rtol=1e-4, atol=1e-5,  # float rounding
                                   msg=lambda m, n=name: f"{n}: {m}")

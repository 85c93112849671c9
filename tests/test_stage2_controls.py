"""Stage 2's controls (spark_vlm/training/stage2_eval.py): with closed gates the image can change nothing, so the
own-image, another-image and blank-image losses must be equal and the image contribution exactly 0; with open
gates they differ; the gate readout and the distinct-caption share report what the model does."""
import numpy as np
import pytest
import torch

from spark_vlm.data.pairs import CaptionedImages
from spark_vlm.data.prompts import FlamingoPrompts
from spark_vlm.training.stage2_eval import caption_losses, distinct_caption_share, gate_values
from test_flamingo import CAPTIONS, make_model, set_gates, single_thread  # noqa: F401 (an autouse fixture)


def val_data(model):
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    prompts = FlamingoPrompts(model.tokenizer)
    return CaptionedImages(images, [[c] for c in CAPTIONS[:6]], list(range(6)), tokenizer=prompts, max_len=24), prompts


def test_closed_gates_make_every_image_control_equal():
    model = make_model().eval()
    data, prompts = val_data(model)
    out = caption_losses(model, data, prompts, torch.device("cpu"), batch_size=4)
    assert out["val_caption_loss"] == out["val_caption_loss_shuffled_images"] == out["val_caption_loss_blank_image"]
    assert out["image_contribution"] == 0.0
    gates = gate_values(model)
    assert set(gates) == {"gate_attn.0", "gate_ff.0", "gate_attn.1", "gate_ff.1"} and set(gates.values()) == {0.0}


def test_open_gates_let_the_image_change_the_loss():
    model = make_model().eval()
    set_gates(model, 1.0)
    data, prompts = val_data(model)
    out = caption_losses(model, data, prompts, torch.device("cpu"), batch_size=4)  # batches of 4 + 2
    assert out["val_caption_loss"] != out["val_caption_loss_shuffled_images"]
    assert out["val_caption_loss"] != out["val_caption_loss_blank_image"]
    assert out["image_contribution"] == pytest.approx(out["val_caption_loss_shuffled_images"] - out["val_caption_loss"])
    assert gate_values(model)["gate_attn.1"] == pytest.approx(np.tanh(1.0))


def test_distinct_caption_share_counts_distinct_strings(monkeypatch):
    model = make_model().eval()
    data, prompts = val_data(model)
    monkeypatch.setattr(prompts, "decode", lambda row: "same caption")
    assert distinct_caption_share(model, data, prompts, torch.device("cpu"), max_new_tokens=2) == pytest.approx(1 / 6)
    names = iter(range(100))
    monkeypatch.setattr(prompts, "decode", lambda row: f"caption {next(names)}")
    assert distinct_caption_share(model, data, prompts, torch.device("cpu"), num_images=4, batch_size=3,
                                  max_new_tokens=2) == 1.0

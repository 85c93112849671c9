"""Stage 2's controls (spark_vlm/training/stage2_eval.py): with closed gates the image can change nothing, so the
own-image, another-image and blank-image losses must be equal and the image contribution exactly 0; with open
gates they differ; the gate readout and the distinct-caption share report what the model does."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from spark_vlm.data.pairs import CaptionedImages
from spark_vlm.data.prompts import FlamingoPrompts
from spark_vlm.training.stage2_eval import caption_losses, distinct_caption_share, gate_values, text_only_caption_loss
from test_flamingo import (CAPTIONS, make_lm, make_model, make_tokenizer, set_gates,  # noqa: F401
                           single_thread)  # an autouse fixture


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


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_at_initialisation_the_captioner_reads_image_as_the_lms_start_token(family, tmp_path):
    """With a start token, `<image>` starts as <bos> and the gates are closed: over the LM's vocabulary the captioner
    gives exactly the frozen LM's logits on "<bos> caption", so every later gain over the text-only number is the
    image's. (Its loss differs only by the probability of the two new tokens' logit columns.)"""
    make_lm(family).save_pretrained(tmp_path)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokenizer = make_tokenizer()
    tokenizer.bos_token = "<|endoftext|>"
    model = make_model(lm=AutoModelForCausalLM.from_pretrained(tmp_path), tokenizer=tokenizer).eval()
    data, prompts = val_data(model)
    ids, mask = data.input_ids[:4], data.attention_mask[:4]
    with torch.no_grad():
        ours = model(torch.zeros(4, 1, 3, 16, 16), ids, mask).logits[..., :model.lm_vocab_size]
        theirs = lm(input_ids=ids.masked_fill(ids >= model.lm_vocab_size, tokenizer.bos_token_id),
                    attention_mask=mask).logits
    real = mask.bool() & (ids != model.eoc_token_id)  # <|endofchunk|> is a token the LM never had
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)
    out = caption_losses(model, data, prompts, torch.device("cpu"), batch_size=4)
    text_only = text_only_caption_loss(str(tmp_path), data, prompts)
    assert 0 <= out["val_caption_loss"] - text_only < 0.01


def test_gate_learning_rate_multiplier_reaches_only_the_gates():
    from spark_vlm.training.config import ConfigError, load_config
    from spark_vlm.training.optim import build_optimizer
    from spark_vlm.training.stage2_config import Stage2Config

    model = make_model()
    gates = {id(p) for n, p in model.named_parameters() if n.endswith(("attn_gate", "ff_gate"))}
    optimizer = build_optimizer(model, 1e-3, 0.1, lr_mult=lambda n: 30.0 if n.endswith(("attn_gate", "ff_gate"))
                                else 1.0)
    seen = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.trainable_parameters())  # each trainable tensor once
    for group in optimizer.param_groups:
        is_gate = {id(p) in gates for p in group["params"]}
        assert len(is_gate) == 1
        assert group["lr"] == pytest.approx(3e-2 if is_gate == {True} else 1e-3)
        assert group["weight_decay"] == (0.1 if all(p.ndim >= 2 for p in group["params"]) else 0.0)
    assert len(gates) == 4
    assert load_config(Stage2Config, None, ["optim.gate_lr_mult=10"]).optim.gate_lr_mult == 10
    with pytest.raises(ConfigError, match="optim.gate_lr_mult: must be > 0"):
        load_config(Stage2Config, None, ["optim.gate_lr_mult=0"])


def test_question_accuracy_matches_a_per_question_loop():
    """The batched yes/no control against one forward per question, with the own image and with image i+1."""
    from spark_vlm.data.images import to_pixel_values
    from spark_vlm.data.scene_vocab import SHAPES
    from spark_vlm.data.text import object_question, question_answer
    from spark_vlm.training.stage2_eval import question_accuracy, val_questions
    model = make_model().eval()
    set_gates(model, 1.0)
    data, prompts = val_data(model)
    shapes = [{"star"}, {"circle", "ring"}, set(SHAPES), {"square"}, {"cross"}, {"hexagon"}]
    questions = val_questions(shapes, 6)
    assert len(questions) == 11  # image 2 has every shape: no absent question
    assert [label for i, _, label in questions if i == 0] == [True, False]
    out = question_accuracy(model, data.images, shapes, prompts, torch.device("cpu"), batch_size=4)
    yes, no = prompts.caption_ids("yes")[0], prompts.caption_ids("no")[0]
    for suffix, shift in (("", 0), ("_shuffled_images", 1)):
        right = said_yes = 0
        for i, question, label in questions:
            ids = torch.tensor([prompts.chunk_ids(question_answer(question), closed=False)])
            with torch.no_grad():
                px = to_pixel_values(data.images[[(i + shift) % 6]])[:, None]
                logits = model(px, ids, torch.ones_like(ids)).logits[0, -1]
            answer = bool(logits[yes] > logits[no])
            right += answer == label
            said_yes += answer if shift == 0 else 0
        assert out[f"val_question_accuracy{suffix}"] == pytest.approx(100 * right / len(questions))
        if shift == 0:
            assert out["val_question_yes_ratio"] == pytest.approx(100 * said_yes / len(questions))
    assert questions[0][1] == object_question("star")

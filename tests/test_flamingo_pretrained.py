"""SparkFlamingo as a transformers-style model: save_pretrained / from_pretrained (frozen parts by path, relocatable
but hash-checked), the inference CLI's --device / --vision-checkpoint / --lm-path, and generate()'s keywords on
batched, interleaved multi-image prompts.

The "run" here is built in-process from the tiny parts of test_flamingo (no training subprocess): the on-disk
layout is the one stage 2 writes (trainable.safetensors + manifest.json + tokenizer/).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from spark_vlm.evaluation.captioner import resolve_device
from spark_vlm.models.flamingo import FlamingoConfig, SparkFlamingo
from test_eval_cli import cli
from test_flamingo import (images, left_pad, make_lm, make_model, make_tokenizer, make_vision, set_gates,
                           single_thread)  # noqa: F401 (an autouse fixture)

TINY = dict(vision_width=32, num_latents=4, resampler_depth=1, resampler_heads=2, resampler_dim_head=8,
            xattn_heads=2, xattn_dim_head=8, ff_mult=2)


@pytest.fixture
def run_dir(tmp_path):
    """A saved captioner whose frozen parts live in tmp_path/parts/{vision,lm}; returns (run dir, model)."""
    vision_dir, lm_dir = tmp_path / "parts" / "vision", tmp_path / "parts" / "lm"
    make_vision().save_pretrained(vision_dir)
    make_lm("gpt2").save_pretrained(lm_dir)
    make_tokenizer().save_pretrained(lm_dir)
    torch.manual_seed(3)
    model = SparkFlamingo.from_pretrained_parts(FlamingoConfig(**TINY), str(vision_dir), str(lm_dir)).eval()
    set_gates(model, 0.8)  # open gates: the loaded trainable weights change every logit
    return model.save_pretrained(str(tmp_path / "run")), model


def prompt_batch(model):
    ids, mask = left_pad([[model.image_token_id, 5, 6, 7], [model.image_token_id, 8]])
    return images(2, 1), ids, mask


def test_save_then_load_gives_identical_logits_and_captions(run_dir):
    path, model = run_dir
    manifest = json.loads(open(f"{path}/manifest.json").read())
    assert manifest["lm"]["dtype"] == "float32" and manifest["vision"]["source"].endswith("parts/vision")
    loaded = SparkFlamingo.from_pretrained(path)
    assert not loaded.training
    pv, ids, mask = prompt_batch(model)
    with torch.no_grad():
        assert torch.equal(loaded(pv, ids, mask).logits, model(pv, ids, mask).logits)
    greedy = model.generate(pv, ids, mask, max_new_tokens=6)
    assert torch.equal(loaded.generate(pv, ids, mask, max_new_tokens=6), greedy)
    # A loaded model saves the same directory again (what eval/caption.py --checkpoint reads).
    again = SparkFlamingo.from_pretrained(loaded.save_pretrained(f"{path}-again"))
    assert torch.equal(again.generate(pv, ids, mask, max_new_tokens=6), greedy)


def test_a_moved_backbone_is_found_through_the_overrides(run_dir, tmp_path):
    path, model = run_dir
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "parts", moved)
    with pytest.raises(FileNotFoundError, match="frozen vision of .* is not at .*parts/vision.*--vision-checkpoint"):
        SparkFlamingo.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="frozen lm of .*--lm-path"):
        SparkFlamingo.from_pretrained(path, vision_path=str(moved / "vision"))
    loaded = SparkFlamingo.from_pretrained(path, str(moved / "vision"), str(moved / "lm"), device="cpu")
    pv, ids, mask = prompt_batch(model)
    assert torch.equal(loaded.generate(pv, ids, mask, max_new_tokens=6), model.generate(pv, ids, mask,
                                                                                        max_new_tokens=6))
    assert loaded.vision_source == str(moved / "vision")  # a save from here records the new place


def write_images(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_caption_cli_overrides_relocate_and_refuse_another_backbone(run_dir, tmp_path, capsys):
    caption_cli = cli("caption")
    path, _ = run_dir
    folder = write_images(tmp_path / "images")
    before = caption_cli.main(["--checkpoint", path, "--image-dir", str(folder), "--out", str(tmp_path / "a.json"),
                               "--max-new-tokens", "5", "--device", "cpu"])
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "parts", moved)
    after = caption_cli.main(["--checkpoint", path, "--image-dir", str(folder), "--out", str(tmp_path / "b.json"),
                              "--max-new-tokens", "5", "--device", "auto", "--vision-checkpoint",
                              str(moved / "vision"), "--lm-path", str(moved / "lm")])
    assert after == before and len(after) == 3
    capsys.readouterr()

    make_vision(seed=5).save_pretrained(tmp_path / "other_vision")
    make_lm("gpt2", seed=5).save_pretrained(tmp_path / "other_lm")
    for flags, part in ((["--vision-checkpoint", str(tmp_path / "other_vision"), "--lm-path", str(moved / "lm")],
                         "vision"),
                        (["--vision-checkpoint", str(moved / "vision"), "--lm-path", str(tmp_path / "other_lm")],
                         "lm")):
        with pytest.raises(SystemExit) as exit_info:
            caption_cli.main(["--checkpoint", path, "--image-dir", str(folder), "--out", str(tmp_path / "c.json"),
                              *flags])
        err = capsys.readouterr().err  # (above the error: transformers' loading progress bars)
        assert exit_info.value.code == 2 and err.endswith("\n") and err.count("error") == 1
        err = err.rstrip("\n").split("\n")[-1]
        assert err.startswith(f"error: frozen {part} mismatch:") and "refusing to load" in err
        assert str(tmp_path / f"other_{part}") in err  # names the override that was refused


def test_device_choice():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: no CUDA device is available"):
            resolve_device("cuda")


# ---------------------------------------------------------------------------------------------- generate keywords
def test_generate_takes_the_transformers_keywords_and_refuses_others():
    model = make_model("gpt2").eval()
    set_gates(model, 0.8)
    pv, ids, mask = prompt_batch(model)
    free = model.generate(pv, ids, mask, max_new_tokens=6, eos_token_id=[])
    row = free[0].tolist()
    j = next(j for j in range(1, 6) if row[j] not in row[:j])  # a token first generated at step j
    out = model.generate(pv, ids, mask, max_new_tokens=6, eos_token_id=row[j], pad_token_id=1)
    assert out[0, : j + 1].tolist() == row[: j + 1] and set(out[0, j + 1:].tolist()) <= {1}
    # attention_mask may be left out when nothing is padded
    assert torch.equal(model.generate(pv[:1], ids[:1], max_new_tokens=4), model.generate(pv[:1], ids[:1], mask[:1],
                                                                                          max_new_tokens=4))
    for kwargs in ({"repetition_penalty": 1.2}, {"max_length": 10}):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{next(iter(kwargs))}'"):
            model.generate(pv, ids, mask, **kwargs)


def test_interleaved_two_image_prompts_batch_like_each_row_alone():
    model = make_model("llama").eval()
    set_gates(model, 0.8)
    img = model.image_token_id
    rows = [[img, 5, 6, 7, model.eoc_token_id, img, 8], [img, 9, model.eoc_token_id, img, 10, 11, 12, 13]]
    ids, mask = left_pad(rows)
    pv = images(2, 2)
    for kwargs in (dict(max_new_tokens=6), dict(max_new_tokens=6, num_beams=3)):
        batched = model.generate(pv, ids, mask, **kwargs)
        uncached = model.generate(pv, ids, mask, use_cache=False, cache_visual=False, **kwargs)
        assert torch.equal(batched, uncached)
        for b, row in enumerate(rows):
            alone = model.generate(pv[b:b + 1], torch.tensor([row]), **kwargs)
            assert torch.equal(batched[b, : alone.shape[1]], alone[0])
    # The generated tokens read the second image (the latest), so changing it changes them.
    changed = pv.clone()
    changed[:, 1] = -pv[:, 1]
    greedy = model.generate(pv, ids, mask, max_new_tokens=6, eos_token_id=[])
    assert not torch.equal(model.generate(changed, ids, mask, max_new_tokens=6, eos_token_id=[]), greedy)


def test_pope_cli_takes_the_same_overrides(run_dir, tmp_path, capsys):
    path, _ = run_dir
    folder = write_images(tmp_path / "images", n=2)
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"image": f"{i}.png", "text": "Is there a cube in the image?",
                                             "label": label}) + "\n" for i, label in ((0, "yes"), (1, "no"))))
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "parts", moved)
    pope = cli("pope")
    base = ["--checkpoint", path, "--questions", str(questions), "--image-dir", str(folder), "--shots", "0",
            "--out", str(tmp_path / "pope.json"), "--device", "cpu", "--vision-checkpoint", str(moved / "vision")]
    result = pope.main(base + ["--lm-path", str(moved / "lm")])
    assert result["settings"]["q"]["n"] == 2
    make_lm("gpt2", seed=5).save_pretrained(tmp_path / "other_lm")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        pope.main(base + ["--lm-path", str(tmp_path / "other_lm")])
    err = capsys.readouterr().err.replace("\r", "\n").rstrip("\n").split("\n")[-1]
    assert exit_info.value.code == 2 and err.startswith("error: frozen lm mismatch:")


def test_a_bfloat16_lm_is_reloaded_in_bfloat16(tmp_path):
    """The LM's hash depends on the dtype it ran in (stage 2's lm.dtype); the manifest records it, so a run trained
    on a bf16 copy of an fp32 LM directory loads again (as saved, it would hash differently and be refused)."""
    make_vision().save_pretrained(tmp_path / "vision")
    make_lm("gpt2").save_pretrained(tmp_path / "lm")  # fp32 on disk
    make_tokenizer().save_pretrained(tmp_path / "lm")
    model = SparkFlamingo.from_pretrained_parts(FlamingoConfig(**TINY), str(tmp_path / "vision"),
                                                str(tmp_path / "lm"), lm_dtype=torch.bfloat16).eval()
    set_gates(model, 0.8)
    loaded = SparkFlamingo.from_pretrained(model.save_pretrained(str(tmp_path / "run")))
    assert loaded.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    pv, ids, mask = prompt_batch(model)
    with torch.no_grad():
        assert torch.equal(loaded(pv, ids, mask).logits, model(pv, ids, mask).logits)

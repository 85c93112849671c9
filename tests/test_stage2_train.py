"""Stage 2 end to end on tiny configs: prompt labels, the stand-in LM, a plain run, the missing-stage-1
error, DeepSpeed ZeRO-2/ZeRO-3 launches through accelerate, and captioning from the run directory."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spark_vlm.data.prompts import FlamingoPrompts
from spark_vlm.models import SparkConfig, SparkModel
from spark_vlm.training.standin_lm import StandinLM, pretrain_standin_lm, train_bpe_tokenizer

pytestmark = pytest.mark.slow  # training runs (subprocesses incl. DeepSpeed ZeRO-2/3, and in this process)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "stage2_vlm" / "train.py")
CAPTIONS = ["two red circles", "a blue square left of a green star", "one yellow ring", "three small crosses",
            "a large purple hexagon above a white diamond", "a picture of a black circle"] * 30


@pytest.fixture(scope="module")
def stage1_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("stage1")
    torch.manual_seed(0)
    SparkModel(SparkConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                           vocab_size=50, max_text_len=8, text_width=32, text_layers=1, text_heads=2,
                           embed_dim=16)).save_pretrained(path)
    return path


TINY = ["data.num_train=64", "data.num_val=16", "data.max_text_len=40", "lm.standin.width=32",
        "lm.standin.layers=2", "lm.standin.heads=2", "lm.standin.steps=10", "lm.standin.vocab_size=300",
        "model.num_latents=4", "model.resampler_depth=1", "model.resampler_heads=2", "model.resampler_dim_head=8",
        "model.xattn_heads=2", "model.xattn_dim_head=8", "train.batch_size=8", "train.log_every=1",
        "optim.warmup_steps=2",
        "train.peak_tflops=1"]  # no peak measurement: a 2048² bf16 matmul takes minutes on CPUs without bf16 units


def run(args, tmp_path, launcher=None):
    env = {**os.environ, "SPARK_VLM_CACHE": str(tmp_path.parent / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = (launcher or [sys.executable]) + [SCRIPT] + args
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_prompt_labels_score_only_the_caption_and_its_end():
    tok = train_bpe_tokenizer(CAPTIONS, 200)
    tok.add_special_tokens({"extra_special_tokens": ["<image>", "<|endofchunk|>"]})
    prompts = FlamingoPrompts(tok)
    enc = prompts(["two red circles", "one yellow ring"], max_len=40)
    ids, mask, labels = enc["input_ids"], enc["attention_mask"], enc["labels"]
    body = prompts.caption_ids("two red circles")
    n = len(body) + 2
    assert ids[0, :n].tolist() == [prompts.image_id, *body, prompts.end_id]
    assert labels[0, 0] == -100 and labels[0, 1:n].tolist() == [*body, prompts.end_id]
    assert (labels[0, n:] == -100).all() and mask[0, :n].all() and not mask[0, n:].any()
    assert tok.decode(body).strip() == "two red circles"  # the caption keeps the LM's word boundaries
    assert prompts.decode(torch.tensor([*body, prompts.end_id, *body])) == "two red circles"


def test_standin_lm_is_cached_and_loadable(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = StandinLM(width=32, layers=1, heads=2, steps=5, vocab_size=200)
    path = pretrain_standin_lm(CAPTIONS, CAPTIONS[:6], tmp_path, settings)
    assert pretrain_standin_lm(CAPTIONS, CAPTIONS[:6], tmp_path, settings) == path  # second call: from the cache
    assert json.loads((path / "standin_lm.json").read_text())["val_caption_loss"] > 0
    lm = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert lm.config.vocab_size == len(tok) and tok.pad_token is not None
    llama = pretrain_standin_lm(CAPTIONS, CAPTIONS[:6], tmp_path, replace(settings, steps=3, arch="llama"))
    assert AutoModelForCausalLM.from_pretrained(llama).config.model_type == "llama"


def test_standin_lm_leaves_the_random_state_alone(tmp_path):
    """Stage 2 must give the same weights whether its stand-in LM was trained now or read from the cache."""
    settings = StandinLM(width=32, layers=1, heads=2, steps=3, vocab_size=200)
    after = []
    for _ in range(2):  # trained, then cached
        torch.manual_seed(123)
        pretrain_standin_lm(CAPTIONS, CAPTIONS[:6], tmp_path, settings)
        after.append(torch.rand(4))
    torch.manual_seed(123)
    torch.testing.assert_close(after[0], torch.rand(4))
    torch.testing.assert_close(after[1], after[0])


def test_missing_stage1_is_a_clear_error(tmp_path):
    proc = run(TINY + [f"vision_checkpoint={tmp_path / 'nope'}", f"train.output_dir={tmp_path / 'out'}"], tmp_path)
    assert proc.returncode == 2
    assert "run stage 1 first: accelerate launch stage1_pretrain/train.py" in proc.stderr


def check_run_dir(out: Path, steps: int):
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("kind") is None] == list(range(1, steps + 1))
    evals = [r for r in records if r.get("kind") == "eval"]
    assert evals and {"val_loss", "val_caption_loss", "val_caption_loss_text_only", "val_caption_loss_shuffled_images",
                      "val_caption_loss_blank_image", "image_contribution", "distinct_captions"} <= set(evals[-1])
    assert any(k.startswith("gate_attn.") for k in evals[-1]) and 0 < evals[-1]["distinct_captions"] <= 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["vision"]["sha256"]) == 64 and len(manifest["lm"]["sha256"]) == 64
    from safetensors.torch import load_file

    keys = load_file(out / "trainable.safetensors").keys()
    assert keys and all(k.startswith(("perceiver.", "new_token_", "lm.")) for k in keys)
    assert not any(k.startswith("vision.") for k in keys)  # only the trainable parts are saved


def test_plain_run_then_caption_from_the_run_dir(tmp_path, stage1_dir):
    out = tmp_path / "run"
    proc = run(TINY + [f"vision_checkpoint={stage1_dir}", f"train.output_dir={out}", "train.max_steps=4",
                       "train.eval_every=2", "train.save_every=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "for the frozen text-only LM" in proc.stdout and "image contribution (another image - own image)" in proc.stdout
    assert "frozen vision features of the 64 training images: 0.00 GB, kept in memory" in proc.stdout
    check_run_dir(out, 4)

    from spark_vlm.evaluation.captioner import caption_images, load_captioner
    from spark_vlm.data.scenes import cached_scenes

    model, prompts = load_captioner(out)
    images, _, _ = cached_scenes("test", 3, 32, cache_dir=str(tmp_path / "scenes")).arrays()
    captions = caption_images(model, prompts, images, batch_size=2, max_new_tokens=5, progress=False)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)

    # POPE on the run, both answer modes; batching (right padding) must not change a likelihood answer
    from spark_vlm.data.coco_export import export_coco
    from spark_vlm.data.scenes import SceneConfig
    from spark_vlm.evaluation.pope import pope_report

    paths = export_coco(str(tmp_path / "coco"), "test", 12, SceneConfig(image_size=32))  # 5 with >= 3 shapes
    kwargs = dict(settings=["random", "adversarial"], num_images=3, shots=2)
    results = {(answer, batch): pope_report(out, paths["images"], paths["instances"], answer=answer, batch_size=batch,
                                            **kwargs).result for answer, batch in
               [("likelihood", 1), ("likelihood", 4), ("generate", 4), ("statement", 8)]}
    assert results["likelihood", 1] == results["likelihood", 4]
    assert results["statement", 8]["shots"] == 0 and len(results["statement", 8]["statements"]) == 1
    for result in results.values():
        for scores in result["settings"].values():
            assert scores["num_images"] == 3 and scores["n"] == 18 and 0 <= scores["yes_ratio"] <= 100

    # Few-shot captioning of the trained run through the CLI (open_flamingo's prompt; the stand-in LM's context
    # is data.max_text_len = 40 tokens, room for one shot): seeded, and batching does not change a caption.
    from test_eval_cli import cli

    caption = cli("caption")
    args = ["--checkpoint", str(out), "--image-dir", paths["images"], "--annotations", paths["captions"],
            "--shots", "1", "--max-new-tokens", "3", "--limit", "4", "--device", "cpu"]
    few = caption.main(args + ["--out", str(tmp_path / "few.json")])
    assert len(few) == 4 and all(isinstance(r["caption"], str) for r in few)
    assert caption.main(args + ["--out", str(tmp_path / "few1.json"), "--batch-size", "1"]) == few


@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_zero_runs_and_resumes_exactly_on_cpu(tmp_path, stage1_dir, zero):
    from safetensors.torch import load_file

    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launcher = [accelerate, "launch", "--config_file", f"configs/accelerate/deepspeed_zero{zero}.yaml"]
    # bf16 under ZeRO-2: the engine holds bf16 module weights, the export must still be the fp32 master weights.
    precision = "bf16" if zero == 2 else "fp32"
    common = TINY + [f"vision_checkpoint={stage1_dir}", "train.max_steps=4", "train.eval_every=0",
                     "train.save_every=2", "train.keep_checkpoints=3", "optim.grad_clip=0.5",
                     f"train.precision={precision}"]
    out = tmp_path / f"zero{zero}"
    proc = run(common + [f"train.output_dir={out}"], tmp_path, launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"DeepSpeed ZeRO-{zero}: gradient clipping 0.5 (from the engine)" in proc.stdout  # not Accelerate's 1.0
    check_run_dir(out, 4)
    exported = load_file(out / "trainable.safetensors").values()
    assert {t.dtype for t in exported} == {torch.float32}
    if precision == "bf16":  # the optimizer's fp32 master weights, not the engine's bf16 copies cast back up
        assert any(not torch.equal(t, t.bfloat16().float()) for t in exported)
    # Resume from the step-2 checkpoint (saved without the frozen parameters) into a new run directory.
    again = tmp_path / f"zero{zero}_resumed"
    proc = run(common + [f"train.output_dir={again}", "--resume", str(out / "checkpoints" / "step_00000002")],
               tmp_path, launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from" in proc.stdout
    a, b = load_file(out / "trainable.safetensors"), load_file(again / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_keeps_only_trainable_weights_and_continues_exactly(tmp_path, stage1_dir, stage2_here):
    from safetensors.torch import load_file

    common = TINY + [f"vision_checkpoint={stage1_dir}", "train.eval_every=0", "train.save_every=2",
                     "train.precision=fp32", "train.max_steps=4", "train.keep_checkpoints=3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cache = tmp_path.parent / "cache"  # run()'s, shared with the launched runs
    first = stage2_here(common + [f"train.output_dir={straight}"], cache)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt_dir = straight / "checkpoints" / "step_00000002"
    ckpt = load_file(ckpt_dir / "model.safetensors")
    assert ckpt and not any(k.startswith("vision.") for k in ckpt)  # the frozen parts are never copied
    assert all(k.startswith(("perceiver.", "new_token_")) or "gated_xattn" in k for k in ckpt), sorted(ckpt)[:5]
    second = stage2_here(common + [f"train.output_dir={resumed}", "--resume", str(ckpt_dir)], cache)
    assert second.returncode == 0, second.stderr[-3000:]
    a, b = load_file(straight / "trainable.safetensors"), load_file(resumed / "trainable.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")

    # The checkpoint holds no frozen weights: resuming it on another stage-1 backbone is refused by name.
    other = tmp_path / "other_stage1"
    torch.manual_seed(1)
    SparkModel(SparkModel.config_class.from_pretrained(stage1_dir)).save_pretrained(other)
    third = stage2_here(common + [f"train.output_dir={tmp_path / 'other'}", f"vision_checkpoint={other}", "--resume",
                                  str(ckpt_dir)], cache)
    assert third.returncode == 2
    error = third.stderr.strip().splitlines()[-1]
    assert error.startswith("error: --resume") and "frozen vision mismatch" in error and str(other) in error


def test_object_questions_are_true_and_deterministic():
    from spark_vlm.data.stage2 import add_object_questions
    from spark_vlm.data.scene_vocab import SHAPES

    captions = [["two red circles"], ["a blue star"], ["a ring"]]
    shapes = [{"circle"}, {"star", "ring"}, set(SHAPES)]  # the last image has no absent shape to ask about
    out = add_object_questions(captions, shapes, per_image=4, seed=3, vocabulary=SHAPES)
    assert out == add_object_questions(captions, shapes, per_image=4, seed=3, vocabulary=SHAPES)
    assert [c[0] for c in out] == ["two red circles", "a blue star", "a ring"]  # captions kept first
    for caps, present in zip(out, shapes):
        for q in caps[1:]:
            obj = q.split("Is there ")[1].split(" in the image")[0].split(" ", 1)[1]
            assert q.endswith("Answer: yes") == (obj in present), q
    assert len(out[0]) == 1 + 4 and len(out[2]) == 1 + 2  # no "no" questions when nothing is absent


def test_object_questions_train(tmp_path, stage1_dir, stage2_here):
    out = tmp_path / "qa"
    proc = stage2_here(TINY + [f"vision_checkpoint={stage1_dir}", f"train.output_dir={out}", "train.max_steps=2",
                               "train.eval_every=0", "train.save_every=0", "data.object_questions=2",
                               "model.resampler=perceiver"],  # the reference resampler through the trainer too
                       tmp_path.parent / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("kind") is None] == [1, 2]
    final = [r for r in records if r.get("kind") == "eval"][-1]  # the yes/no control runs when questions are trained
    assert 0 <= final["val_question_accuracy"] <= 100 and 0 <= final["val_question_yes_ratio"] <= 100
    assert "yes/no object questions" in proc.stdout
    from safetensors.torch import load_file
    assert "perceiver.latents" in load_file(out / "trainable.safetensors")


def test_object_questions_are_true_and_balanced(tmp_path):
    """The training text `data.object_questions=2` adds: per image one question about a present shape answered
    "yes" and one about an absent shape answered "no", in the POPE probe's wording."""
    from spark_vlm.data.scene_vocab import SHAPES
    from spark_vlm.data.scenes import cached_scenes
    from spark_vlm.data.stage2 import stage2_arrays
    from spark_vlm.data.text import object_question
    from spark_vlm.training.config import load_config
    from spark_vlm.training.stage2_config import Stage2Config

    d = load_config(Stage2Config, None, ["data.num_train=20", "data.num_val=2", "data.object_questions=2",
                                         "train.batch_size=4", f"data.cache_dir={tmp_path}"]).data
    (_, captions, _), _ = stage2_arrays(d, 32)
    scenes = cached_scenes("train", 20, 32, cache_dir=str(tmp_path))
    for i, caps in enumerate(captions):
        present = {o["shape"] for o in scenes[i]["objects"]}
        assert caps[:-2] == scenes[i]["captions"]
        answers = {}
        for q in caps[-2:]:
            shape = next(s for s in SHAPES if q == f"Question: {object_question(s)} Answer: {'yes' if s in present else 'no'}")
            answers[shape in present] = shape
        assert set(answers) == {True, False}

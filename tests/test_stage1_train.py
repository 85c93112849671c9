"""End-to-end stage-1 training on a tiny config: run directory, logs, from_pretrained, exact resume,
config errors, and a real 2-process (gloo) launch. Runs whose launch is not the point run in this process
(conftest's `stage1_here`); the config error, the SIGKILLed run and the 2-process run launch the real script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spark_vlm.data.tokenizer import CaptionTokenizer
from spark_vlm.models import SparkModel

pytestmark = pytest.mark.slow  # training runs (in this process, in subprocesses, 2 gloo ranks)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "stage1_pretrain" / "train.py")
TINY = ["model.image_size=32", "model.patch_size=8", "model.vision_width=32", "model.vision_layers=1",
        "model.vision_heads=2", "model.text_width=32", "model.text_layers=1", "model.text_heads=2",
        "model.embed_dim=16", "model.max_text_len=24", "data.num_train=96", "data.num_val=16",
        "data.vocab_size=200", "train.batch_size=16", "train.log_every=2", "optim.warmup_steps=3",
        "train.precision=fp32"]


def run(args, tmp_path, extra_env=None, launcher=None, timeout=300):
    env = {**os.environ, "SPARK_VLM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.update(extra_env or {})
    cmd = (launcher or [sys.executable]) + [SCRIPT] + args
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["sparc", "clip", "filip"])
def test_tiny_run_writes_a_loadable_run_dir(tmp_path, loss, stage1_here):
    out = tmp_path / "run"
    proc = stage1_here(TINY + [f"loss={loss}", "train.max_steps=8", "train.eval_every=4", "train.save_every=4",
                               f"train.output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "R@1 = " in proc.stdout and "truth-aware (any image the caption is true of)" in proc.stdout
    for name in ("config.json", "model.safetensors", "tokenizer.model", "config.yaml", "eval_results.json"):
        assert (out / name).is_file(), name
    recs = records(out)
    train_steps = [r["step"] for r in recs if r.get("kind") is None]
    assert train_steps == list(range(1, 9))  # one record per optimiser step
    assert all("loss" in r and r["loss"] > 0 for r in recs if r.get("kind") is None)
    evals = [r for r in recs if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [4, 8] and all(0 <= r["R@1"] <= 100 for r in evals)
    assert {"patches_kept_frac", "align_entropy", "fine_loss_matched", "fine_loss_shuffled", "fine_loss_blank_image",
            "fine_loss_position_only", "position_variance_share"} <= set(evals[0])
    assert {"truth_R@1", "truth_R@1_ceiling", "text_to_image_R@1_ceiling", "count/truth_R@1"} <= set(evals[0])
    assert all(0 <= evals[0][f"grounding_{k}"] <= 100 for k in ("mass_in_mask", "pointing", "mass_in_mask_uniform"))
    assert evals[0]["grounding_words"] > 0 and "grounding (" in proc.stdout
    if loss == "sparc":
        assert {"global_loss", "fine_loss"} <= set(recs[0])
    model = SparkModel.from_pretrained(out)
    tok = CaptionTokenizer.load(out)
    ids = tok(["two red circles"], model.config.max_text_len)
    assert model.encode_text(ids["input_ids"], ids["attention_mask"]).shape == (1, 16)
    assert (out / "checkpoints").is_dir() and len(list((out / "checkpoints").glob("step_*"))) == 2


def test_resume_continues_exactly(tmp_path, stage1_here):
    # One run to step 9 saving at 5; then a second run resumed from that step-5 checkpoint must end with the
    # same weights and the same losses. 96 images / batch 16 = 6 batches per epoch, so step 5 is mid-epoch:
    # the data order, RNG, optimizer and schedule must all resume.
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = TINY + ["train.eval_every=0", "train.save_every=5", "train.max_steps=9", "train.keep_checkpoints=3"]
    first = stage1_here(common + [f"train.output_dir={straight}"])
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = straight / "checkpoints" / "step_00000005"
    second = stage1_here(common + [f"train.output_dir={resumed}", "--resume", str(ckpt)])
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    losses_a = {r["step"]: r["loss"] for r in records(straight) if r.get("kind") is None}
    losses_b = {r["step"]: r["loss"] for r in records(resumed) if r.get("kind") is None}
    assert sorted(losses_b) == [6, 7, 8, 9]
    assert [losses_b[s] for s in range(6, 10)] == pytest.approx([losses_a[s] for s in range(6, 10)], rel=1e-5)


def test_resume_in_place_logs_every_step_once(tmp_path, stage1_here):
    # As if killed after step 9 was logged but before its checkpoint was written: resuming in the same directory
    # from step 5 must drop the interrupted run's records of steps 6-9 before logging them again.
    import shutil

    out = tmp_path / "run"
    common = TINY + ["train.eval_every=0", "train.save_every=5", "train.max_steps=9", "train.keep_checkpoints=3",
                     f"train.output_dir={out}"]
    assert stage1_here(common).returncode == 0
    before = {r["step"]: r["loss"] for r in records(out) if r.get("kind") is None}
    shutil.rmtree(out / "checkpoints" / "step_00000009")
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 10, "loss": 1.')  # a line cut short by the kill
    proc = stage1_here(common + ["--resume", "latest"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_records = [r for r in records(out) if r.get("kind") is None]
    assert [r["step"] for r in train_records] == list(range(1, 10))
    assert {r["step"]: r["loss"] for r in train_records} == pytest.approx(before, rel=1e-5)


def test_sigkill_then_resume_latest_matches_an_uninterrupted_run(tmp_path, stage1_here):
    """A real `kill -9` mid-run (after a checkpoint, with steps logged past it), then `--resume latest` in the same
    directory: every step is logged once, the per-step losses and the final weights equal an uninterrupted run's."""
    import signal
    import time

    common = TINY + ["train.eval_every=0", "train.save_every=4", "train.max_steps=24", "train.keep_checkpoints=2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert stage1_here(common + [f"train.output_dir={straight}"]).returncode == 0
    env = {**os.environ, "SPARK_VLM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, SCRIPT, *common, f"train.output_dir={killed}"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:  # wait for a checkpoint and a step logged past it
        saved = list((killed / "checkpoints").glob("step_*")) if (killed / "checkpoints").is_dir() else []
        logged = (killed / "metrics.jsonl").read_text().count("\n") if (killed / "metrics.jsonl").exists() else 0
        if saved and logged > 4 * len(saved) + 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = stage1_here(common + [f"train.output_dir={killed}", "--resume", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    steps = [r["step"] for r in records(killed) if r.get("kind") is None]
    assert steps == list(range(1, 25))
    losses = {r["step"]: r["loss"] for r in records(killed) if r.get("kind") is None}
    expected = {r["step"]: r["loss"] for r in records(straight) if r.get("kind") is None}
    assert losses == pytest.approx(expected, rel=1e-5)
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_resume_latest_picks_the_newest_complete_checkpoint(tmp_path, stage1_here):
    out = tmp_path / "run"
    common = TINY + ["train.eval_every=0", "train.save_every=2", f"train.output_dir={out}"]
    assert stage1_here(common + ["train.max_steps=4"]).returncode == 0
    (out / "checkpoints" / ".tmp_step_00000006").mkdir()  # a half-written save must be ignored
    proc = stage1_here(common + ["train.max_steps=6", "--resume", "latest"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "step_00000004" in proc.stdout
    assert [r["step"] for r in records(out) if r.get("kind") is None] == [1, 2, 3, 4, 5, 6]


def test_config_error_is_one_line_before_any_work(tmp_path):
    proc = run(["train.batch_size=0", f"train.output_dir={tmp_path / 'x'}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "config error: train.batch_size: must be > 0, got 0"
    assert not (tmp_path / "x").exists()


def test_two_cpu_processes_really_run(tmp_path):
    out = tmp_path / "ddp"
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    proc = run(TINY + ["train.max_steps=4", "train.eval_every=0", f"train.output_dir={out}"], tmp_path,
               extra_env={"ACCELERATE_USE_CPU": "1"},
               launcher=[accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                         "--mixed_precision", "no", "--dynamo_backend", "no"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    assert [r["step"] for r in records(out) if r.get("kind") is None] == [1, 2, 3, 4]


def test_a_new_run_in_an_old_directory_starts_a_new_history(tmp_path, stage1_here):
    out = tmp_path / "run"
    common = TINY + ["train.eval_every=0", "train.save_every=2", f"train.output_dir={out}"]
    assert stage1_here(common + ["train.max_steps=4"]).returncode == 0
    proc = stage1_here(common + ["train.max_steps=2"])  # no --resume: a fresh run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting a new run" in proc.stdout
    assert [r["step"] for r in records(out) if r.get("kind") is None] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002"]

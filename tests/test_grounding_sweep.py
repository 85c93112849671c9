"""benchmarks/grounding_sweep.py on a micro configuration: two variants, one seed, a few steps of a tiny model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "benchmarks" / "grounding_sweep.py")
TINY = ["model.image_size=32", "model.patch_size=8", "model.vision_width=32", "model.vision_layers=1",
        "model.vision_heads=2", "model.text_width=32", "model.text_layers=1", "model.text_heads=2",
        "model.embed_dim=16", "model.max_text_len=24", "data.num_train=64", "data.num_val=16",
        "data.vocab_size=200", "optim.warmup_steps=2", "train.precision=fp32", "train.save_every=2"]
MICRO = ["--variants", "clip", "sparc+cross4", "--seeds", "1", "--steps", "4", "--batch-size", "8",
         "--eval-every", "2", "--num-images", "12", "--override", *TINY]


def sweep(tmp_path, *args):
    env = {**os.environ, "SPARK_VLM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "sweep"), *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)


@pytest.mark.slow  # trains two tiny runs in subprocesses
def test_micro_sweep_writes_table_plot_and_does_not_retrain(tmp_path):
    proc = sweep(tmp_path, *MICRO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "sweep"
    table = (out / "sweep.md").read_text()
    for name in ("| clip |", "| sparc+cross4 |", "uniform / position-only / blank", "− CLIP"):
        assert name in table
    assert "| clip | " in table and "+0.0 |" in table  # CLIP against itself
    scores = json.loads((out / "sweep.json").read_text())["scores"]
    for name in ("clip", "sparc+cross4"):
        (run,) = scores[name]
        assert 0 <= run["model.mass_in_mask"] <= 100 and 0 <= run["uniform.mass_in_mask"] <= 100
        assert run["words"] > 0 and 0 <= run["probes"] <= 100 and 0 <= run["t2i_R@1"] <= 100
    config = (out / "sparc+cross4" / "seed0" / "config.yaml").read_text()
    assert "fine_cross_images: 4" in config and "max_steps: 4" in config
    assert (out / "sweep.png").stat().st_size > 1000

    weights = out / "clip" / "seed0" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = sweep(tmp_path, *MICRO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training" not in again.stdout and weights.stat().st_mtime_ns == before  # finished runs are kept

    other = sweep(tmp_path, *[a if a != "4" else "6" for a in MICRO])  # --steps 6
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"error: {out / 'clip' / 'seed0'} was trained with max_steps=4 batch_size=8, not 6 x 8; use another --out"]

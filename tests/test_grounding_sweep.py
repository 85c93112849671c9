"""benchmarks/grounding_sweep.py on a micro configuration: two variants, one seed, a few steps of a tiny model.
The sweep's main(argv) runs in this process (its trainings are still real subprocesses of the stage-1 script)."""
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from inprocess import CACHE_USERS

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "benchmarks" / "grounding_sweep.py")
TINY = ["model.image_size=32", "model.patch_size=8", "model.vision_width=32", "model.vision_layers=1",
        "model.vision_heads=2", "model.text_width=32", "model.text_layers=1", "model.text_heads=2",
        "model.embed_dim=16", "model.max_text_len=24", "data.num_train=64", "data.num_val=16",
        "data.vocab_size=200", "optim.warmup_steps=2", "train.precision=fp32", "train.save_every=2"]
MICRO = ["--variants", "clip", "sparc+cross4", "--seeds", "1", "--steps", "4", "--batch-size", "8",
         "--eval-every", "2", "--num-images", "12", "--override", *TINY]


@pytest.fixture
def sweep(tmp_path, monkeypatch, capsys):
    """`python benchmarks/grounding_sweep.py --out tmp/sweep *args` as a function: exit code, stdout, stderr."""
    spec = importlib.util.spec_from_file_location("grounding_sweep", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("SPARK_VLM_CACHE", str(tmp_path / "cache"))  # the training subprocesses'
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for module in CACHE_USERS:  # the scoring's, in this process
        monkeypatch.setattr(module, "CACHE_ROOT", tmp_path / "cache")

    def run(*args):
        capsys.readouterr()
        code = script.main(["--out", str(tmp_path / "sweep"), *args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)
    return run


@pytest.mark.slow  # trains two tiny runs in subprocesses
def test_micro_sweep_writes_table_plot_and_does_not_retrain(tmp_path, sweep):
    proc = sweep(*MICRO)
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
    assert (out / "heatmaps.png").stat().st_size > 1000  # one row of alignment maps per objective

    weights = out / "clip" / "seed0" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = sweep(*MICRO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training" not in again.stdout and weights.stat().st_mtime_ns == before  # finished runs are kept

    other = sweep(*[a if a != "4" else "6" for a in MICRO])  # --steps 6
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"error: {out / 'clip' / 'seed0'} was trained with max_steps=4 batch_size=8, not 6 x 8; use another --out"]

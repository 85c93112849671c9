"""Train one run of either stage as a subprocess of its trainer (`stage1_pretrain/train.py`,
`stage2_vlm/train.py`) with `--resume latest`: an interrupted run continues from its latest checkpoint, a finished
one (its final `eval_results.json` written) is left alone. A run directory trained with other settings is refused
(`mismatches`), never mixed in."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TRAINERS = {1: REPO / "stage1_pretrain" / "train.py", 2: REPO / "stage2_vlm" / "train.py"}


class RunError(Exception):
    """A run that cannot be used or failed: one line for the user."""


def _parse(value: str):
    return yaml.safe_load(value) if value != "" else ""


def mismatches(run_dir: Path, overrides: list[str]) -> dict[str, tuple]:
    """{key: (saved, wanted)} for every `key=value` override that the run's saved config.yaml holds with another
    value; empty when the run directory has no config yet."""
    config = Path(run_dir) / "config.yaml"
    if not config.exists():
        return {}
    saved = yaml.safe_load(config.read_text()) or {}
    found = {}
    for item in overrides:
        key, value = item.split("=", 1)
        node = saved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if key != "train.output_dir" and node != _parse(value):
            found[key] = (node, _parse(value))
    return found


def train(stage: int, run_dir: Path, overrides: list[str], core: int | None = None, launcher: str | None = None
          ) -> None:
    """Train (or finish training) one run into `run_dir`, its output appended to run_dir/train.log; `core` pins the
    subprocess to one CPU core (taskset) where taskset exists; `launcher` replaces `python` (e.g. "accelerate
    launch --num_processes 4")."""
    run_dir = Path(run_dir)
    if (run_dir / "eval_results.json").exists():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    pin = ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []
    start = shlex.split(launcher) if launcher else [sys.executable]
    cmd = [*pin, *start, str(TRAINERS[stage]), "--resume", "latest", *overrides,
           f"train.output_dir={run_dir}"]
    log = run_dir / "train.log"
    with open(log, "a") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode != 0:
            raise RunError(f"training {run_dir} failed; see {log}")
    if not (run_dir / "eval_results.json").exists():
        raise RunError(f"training {run_dir} stopped before its final evaluation (time limit?); see {log}")

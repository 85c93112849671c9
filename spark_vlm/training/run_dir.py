"""One run directory, one run: a lock held while training, and a clean slate for a run that does not resume.

The lock is `run.lock`, taken with `fcntl.flock` by the main process only (the other ranks write into the
directory it holds). The OS releases it when the process ends, even on `kill -9`, so it is never stale; the
file itself stays, holding the last holder's pid, host and start time for the next run's error line.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

from .errors import SetupError

LOCK_FILE = "run.lock"
# What a run of either stage writes into its directory (config.yaml is rewritten by every run).
RUN_ARTEFACTS = ("checkpoints", "metrics.jsonl", "tensorboard", "eval_results.json",
                 "config.json", "generation_config.json", "model.safetensors", "tokenizer.model",  # stage 1
                 "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json",  # stage 1, HF tokenizer
                 "trainable.safetensors", "manifest.json", "tokenizer")  # stage 2


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, is_main: bool):
    """Hold `run_dir/run.lock` for the body (main process only); a second run into the directory stops with
    one line naming the holder."""
    if not is_main:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown holder"
            raise SetupError(f"{run_dir} is in use by another run ({holder}); wait for it to finish or choose "
                             f"another train.output_dir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def start_fresh(run_dir: Path) -> list[str]:
    """A run that does not resume starts a new history: the previous run's log, checkpoints, exported model and
    results would otherwise sit beside this run's config (and `--resume latest` could pick the old state).
    Removes them, says which, and returns their names."""
    stale = [run_dir / name for name in RUN_ARTEFACTS if (run_dir / name).exists()]
    if stale:
        print(f"starting a new run in {run_dir}: removing {', '.join(p.name for p in stale)} of the previous run "
              f"(use --resume latest to continue it instead)")
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return [p.name for p in stale]

"""Run a trainer's command line inside the test process: the same `run_cli` its script calls, without the 10-20 s
of interpreter + torch/transformers/accelerate/DeepSpeed imports a subprocess costs. For tests that check what a
run writes; the launcher itself (process groups, kills, exit codes of the real program) keeps its subprocess tests."""
from __future__ import annotations

import subprocess
from pathlib import Path

import spark_vlm.data.cache
import spark_vlm.data.scenes
import spark_vlm.data.tokenizer
import spark_vlm.training.stage2
from spark_vlm.training.cli import run_cli

# Every module that bound the cache root at import (`from .cache import CACHE_ROOT`); a subprocess would read it
# from SPARK_VLM_CACHE.
CACHE_USERS = (spark_vlm.data.cache, spark_vlm.data.scenes, spark_vlm.data.tokenizer, spark_vlm.training.stage2)


def reset_accelerate() -> None:
    """A fresh process as far as accelerate is concerned: its singletons would otherwise keep the last run's
    precision and device (as accelerate's own tests do between cases)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_in_process(config_cls, build_stage, argv: list[str], cache: Path, monkeypatch, capsys
                   ) -> subprocess.CompletedProcess:
    """`python <trainer> *argv` with SPARK_VLM_CACHE=cache, in this process: exit code, stdout and stderr."""
    for module in CACHE_USERS:
        monkeypatch.setattr(module, "CACHE_ROOT", Path(cache))
    capsys.readouterr()  # only this run's output
    reset_accelerate()
    try:
        code = run_cli(config_cls, build_stage, "in-process run", argv)
    finally:
        reset_accelerate()
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)

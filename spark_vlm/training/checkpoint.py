"""Atomic training checkpoints and `--resume latest`.

A checkpoint is `<run_dir>/checkpoints/step_<N>/`: Accelerate's full state (model, optimizer, scheduler,
RNG states; DeepSpeed shards under DeepSpeed) plus `trainer_state.json`. It is written into a temporary
folder and renamed into place only when complete, so a crash mid-save never leaves a checkpoint that
`--resume latest` would pick up half-written.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """`None` -> no resume; `latest` -> newest complete checkpoint (None if there is none); else a path."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint (no {STATE_FILE} inside)")
    return path


def save_checkpoint(accelerator, run_dir: str | Path, step: int, state: dict, keep: int = 2, **save_kwargs) -> Path:
    """Save the full training state for `step` atomically; keep only the newest `keep` checkpoints."""
    root = checkpoint_dir(run_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), **save_kwargs)  # every rank writes its part (DeepSpeed shards, RNG states)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path, **load_kwargs) -> dict:
    """Restore the full training state; returns the trainer state (step, epoch, ...)."""
    accelerator.load_state(str(path), **load_kwargs)
    return json.loads((Path(path) / STATE_FILE).read_text())


def frozen_mismatch(ckpt: str | Path, frozen: dict[str, dict] | None) -> str | None:
    """Why resuming `ckpt` on top of this run's frozen parts would be wrong (None if it is fine). `frozen` is
    {part: {"source", "sha256"}}, stored in every checkpoint's trainer state: a checkpoint leaves the frozen
    weights out, so resuming on another backbone would otherwise succeed and certify the new one."""
    if frozen is None:
        return None
    saved = json.loads((Path(ckpt) / STATE_FILE).read_text()).get("frozen")
    if saved is None:
        return f"--resume {ckpt}: the checkpoint does not record its frozen parts' hashes; refusing to resume"
    for part in sorted(set(saved) | set(frozen)):
        was, now = saved.get(part, {}), frozen.get(part, {})
        if was.get("sha256") != now.get("sha256"):
            return (f"--resume {ckpt}: frozen {part} mismatch: the checkpoint was trained on "
                    f"{was.get('source', '?')!r} (sha256 {str(was.get('sha256'))[:16]}...), this run loads "
                    f"{now.get('source', '?')!r} (sha256 {str(now.get('sha256'))[:16]}...); refusing to resume")
    return None


def start_fresh(run_dir: Path) -> None:
    """A run that does not resume starts a new history: an old metrics.jsonl and old checkpoints in the same
    directory would otherwise mix two runs (and `--resume latest` could later pick the old run's state)."""
    stale = [p for p in (run_dir / "metrics.jsonl", checkpoint_dir(run_dir)) if p.exists()]
    if stale:
        print(f"starting a new run in {run_dir}: replacing {', '.join(p.name for p in stale)} of the previous run "
              f"(use --resume latest to continue it instead)")
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def checkpoint_filters(accelerator, trainable_only: Callable[[str], bool] | None) -> tuple[dict, dict]:
    """Make `save_state` keep only the parameters `trainable_only` accepts (stage 2: the frozen vision tower and
    LM are never copied into a checkpoint; they are reloaded from their sources). Returns the matching
    `save_state` / `load_state` keyword arguments."""
    if trainable_only is None:
        return {}, {}
    if accelerator.state.deepspeed_plugin is not None:
        return {"exclude_frozen_parameters": True}, {"load_module_strict": False}

    def keep_trainable(models, weights, output_dir):
        for state in weights:
            for key in [k for k in state if not trainable_only(plain_name(k))]:
                del state[key]

    accelerator.register_save_state_pre_hook(keep_trainable)
    return {}, {"strict": False}  # the frozen keys are absent on purpose


def plain_name(key: str) -> str:
    """A parameter name without the DDP and torch.compile wrappers' prefixes."""
    for prefix in ("module.", "_orig_mod."):
        key = key.removeprefix(prefix)
    return key

"""Atomic, verified training checkpoints and `--resume latest`.

A checkpoint is `<run_dir>/checkpoints/step_<N>/`: Accelerate's state (model weights as safetensors, optimizer,
RNG states; DeepSpeed shards under DeepSpeed), `trainer_state.json` (our loop state and the LR schedule, as JSON)
and `checkpoint_manifest.json` (every file's size and sha256). It is written into a temporary folder and renamed
into place only when complete. Nothing in it is unpickled as arbitrary objects: Accelerate loads the optimizer
and RNG files with `torch.load(weights_only=True)`, and a folder holding any file we did not write (e.g. a
planted `custom_checkpoint_0.pkl`, which Accelerate would unpickle unrestricted) is refused by name. Exception:
under DeepSpeed the engine loads its own shards with `weights_only=False`; resume only checkpoints you wrote.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Callable

from .errors import SetupError

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "checkpoint_manifest.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Every file a checkpoint may hold (paths relative to it): ours, Accelerate's, and the DeepSpeed engine's.
_OURS = re.compile(r"^(trainer_state\.json|checkpoint_manifest\.json|model(_\d+)?\.safetensors|optimizer(_\d+)?\.bin"
                   r"|random_states_\d+\.pkl|scaler\.pt|latest|pytorch_model/[\w.]+\.pt)$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders (renamed into place, so complete when written; `checkpoint_problem` checks they
    still are), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def resolve_resume(run_dir: str | Path, resume: str | None, say: Callable[[str], None] = print) -> Path | None:
    """`None` -> no resume; `latest` -> the newest intact checkpoint (None if there is none at all; each damaged
    newer one is skipped with a line saying why); else that directory, which must be intact."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        for path in reversed(found):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            say(f"skipping {path.parent.name}/{path.name}: {problem}")
        if found:
            raise SetupError(f"--resume latest: none of the {len(found)} checkpoints in {checkpoint_dir(run_dir)} "
                             f"is intact; refusing to resume (and to start over on top of them)")
        return None
    path = Path(resume)
    if not path.is_dir():
        raise SetupError(f"--resume {resume}: no such checkpoint directory")
    if problem := checkpoint_problem(path):
        raise SetupError(f"--resume {resume}: {problem}; refusing to resume")
    return path


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder `path` cannot be trusted (None if it is intact): a file we did not write, a bad
    trainer state or manifest, a file missing, or one whose size or sha256 differs from the manifest."""
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    if foreign := [f for f in files if not _OURS.match(f)]:
        return f"{foreign[0]} is not a file this trainer writes"
    try:
        state = json.loads((path / STATE_FILE).read_text())
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"unreadable {STATE_FILE} or {MANIFEST_FILE} ({type(e).__name__}: {e})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or not isinstance(manifest, dict):
        return f"{STATE_FILE} or {MANIFEST_FILE} is not what this trainer writes"
    if missing := sorted(set(manifest) - set(files)):
        return f"{missing[0]} is missing"
    for name in files:
        if name == MANIFEST_FILE:
            continue
        if name not in manifest:
            return f"{name} is not listed in {MANIFEST_FILE}"
        if file_record(path / name) != manifest[name]:
            return f"{name} differs from {MANIFEST_FILE} (size or sha256): damaged or replaced"
    return None


def file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def save_checkpoint(accelerator, run_dir: str | Path, step: int, state: dict, keep: int = 2, **save_kwargs) -> Path:
    """Save the full training state for `step` atomically; keep only the newest `keep` checkpoints. The
    manifest is written last, over the finished folder, just before the rename."""
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
        for script in ("zero_to_fp32.py", "zero_to_torch.py"):  # DeepSpeed's recovery scripts: nothing executable
            (tmp / script).unlink(missing_ok=True)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {p.relative_to(tmp).as_posix(): file_record(p) for p in files}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path, **load_kwargs) -> dict:
    """Restore the full training state; returns the trainer state (step, epoch, ...). A file that passes the
    manifest but does not load (e.g. a pickle of anything but tensors, refused by `weights_only=True`) stops
    the run in one line."""
    try:
        accelerator.load_state(str(path), **load_kwargs)
    except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SetupError(f"--resume {path}: the checkpoint does not load ({type(e).__name__}: {reason})") from None
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

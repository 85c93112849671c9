"""The optimisation loop both stages share: Accelerate set-up, the step loop with gradient accumulation,
clipping, logging, periodic evaluation, atomic checkpoints and exact resume.

The stage-specific parts come in as two callables:
  loss_fn(model, batch) -> dict with a scalar "loss" (plus any other scalars to log)
  eval_fn(model, step)  -> dict of scalars (run on every process; ranks must agree on the result)
"""
from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from .run_logging import MetricsLogger
from .sections import OptimConfig, TrainConfig
from .throughput import Throughput


def make_accelerator(train: TrainConfig):
    """An Accelerator that also works on CPU-only machines with several processes."""
    from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs

    handlers = []
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Without CUDA, accelerate leaves the backend unset and each rank believes it is alone.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    if not torch.cuda.is_available():
        try:  # DeepSpeed would JIT-compile a shared-memory op (30-50 s) it does not need on CPU
            importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        except Exception:  # deepspeed not installed or layout changed: the build just takes longer
            pass
    if not torch.cuda.is_available():
        # `accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise, which halves a 2-core machine.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(train.cpu_threads or max(1, len(os.sched_getaffinity(0)) // local))
    return Accelerator(
        mixed_precision="no" if train.precision == "fp32" else train.precision,
        gradient_accumulation_steps=train.grad_accum_steps,
        # The schedule is defined in optimiser steps; we step it ourselves once per real update.
        step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=handlers,
    )


def start_fresh(run_dir: Path) -> None:
    """A run that does not resume starts a new history: an old metrics.jsonl and old checkpoints in the same
    directory would otherwise mix two runs (and `--resume latest` could later pick the old run's state)."""
    stale = [p for p in (run_dir / "metrics.jsonl", run_dir / "checkpoints") if p.exists()]
    if stale:
        print(f"starting a new run in {run_dir}: replacing {', '.join(p.name for p in stale)} of the previous run "
              f"(use --resume latest to continue it instead)")
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def checkpoint_filters(accelerator, trainable_only: Callable[[str], bool] | None) -> tuple[dict, dict]:
    """Make `save_state` keep only trainable weights; returns the matching save/load keyword arguments."""
    if trainable_only is None:
        return {}, {}
    if accelerator.state.deepspeed_plugin is not None:
        return {"exclude_frozen_parameters": True}, {"load_module_strict": False}

    def keep_trainable(models, weights, output_dir):
        for state in weights:
            for key in [k for k in state if not trainable_only(_plain_name(k))]:
                del state[key]

    accelerator.register_save_state_pre_hook(keep_trainable)
    return {}, {"strict": False}  # the frozen keys are absent on purpose


def _plain_name(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):  # DDP and torch.compile wrappers
        key = key.removeprefix(prefix)
    return key


@dataclass
class LoopState:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batches_into_epoch: int = 0  # loader batches of the current epoch already consumed (for exact resume)


def train_loop(
    accelerator,
    model,
    optimizer,
    scheduler,
    loader,
    loss_fn: Callable,
    eval_fn: Callable | None,
    train: TrainConfig,
    optim: OptimConfig,
    run_dir: str | Path,
    throughput: Throughput,
    resume: str | None = None,
    on_save: Callable[[Path], None] | None = None,
    trainable_only: Callable[[str], bool] | None = None,
) -> tuple[LoopState, dict]:
    """Run until `train.max_steps` optimiser steps (or the time limit). Returns the state and last eval.

    `trainable_only(name)`: when given, checkpoints keep only the parameters it accepts (stage 2: the frozen
    vision tower and LM are never copied into a checkpoint; they are reloaded from their sources)."""
    run_dir = Path(run_dir)
    main = accelerator.is_main_process
    accelerator.register_for_checkpointing(scheduler)
    save_kwargs, load_kwargs = checkpoint_filters(accelerator, trainable_only)

    state = LoopState()
    ckpt = resolve_resume(run_dir, resume)
    if ckpt is None and main:
        start_fresh(run_dir)
    accelerator.wait_for_everyone()
    logger = MetricsLogger(run_dir, enabled=main)
    if ckpt is not None:
        saved = load_checkpoint(accelerator, ckpt, **load_kwargs)
        state = LoopState(saved["step"], saved["epoch"], saved["batches_into_epoch"])
        accelerator.print(f"resumed from {ckpt} at step {state.step}")
    elif resume not in (None, "latest"):
        raise FileNotFoundError(f"--resume {resume}: nothing to resume")

    def save() -> None:
        path = save_checkpoint(accelerator, run_dir, state.step,
                               {"epoch": state.epoch, "batches_into_epoch": state.batches_into_epoch},
                               keep=train.keep_checkpoints, **save_kwargs)
        if on_save is not None:
            on_save(path)

    def evaluate() -> dict:
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            result = eval_fn(accelerator.unwrap_model(model), state.step) if eval_fn else {}
        model.train()
        logger.log({"kind": "eval", **result}, state.step)
        return result

    started = time.time()
    last_eval: dict = {}
    pbar = tqdm(total=train.max_steps, initial=state.step, disable=not main, desc="train", dynamic_ncols=True)
    micro_losses: list[dict] = []
    model.train()
    done = state.step >= train.max_steps
    while not done:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state.epoch)  # seedable sampler: a different, reproducible order each epoch
        if hasattr(getattr(loader, "dataset", None), "set_epoch"):
            loader.dataset.set_epoch(state.epoch)  # e.g. which of an image's captions is used this epoch
        batches = loader
        if state.batches_into_epoch:
            batches = accelerator.skip_first_batches(loader, state.batches_into_epoch)
        for batch in batches:
            with accelerator.accumulate(model):
                out = loss_fn(model, batch)
                accelerator.backward(out["loss"])
                if accelerator.sync_gradients and optim.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_into_epoch += 1
            micro_losses.append({k: v.detach().float() for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0})
            throughput.update(batch_size_of(batch) * accelerator.num_processes)
            if not accelerator.sync_gradients:
                continue

            # ---- one optimiser step is complete
            scheduler.step()
            state.step += 1
            means = {k: torch.stack([m[k] for m in micro_losses]).mean() for k in micro_losses[0]}
            means = {k: accelerator.reduce(v, reduction="mean").item() for k, v in means.items()}
            micro_losses = []
            if not all(math.isfinite(v) for v in means.values()):
                raise FloatingPointError(f"non-finite loss at step {state.step}: {means}")
            record = {**means, "lr": scheduler.get_last_lr()[0]}
            if state.step % train.log_every == 0 or state.step == 1:
                record.update(throughput.read())
                pbar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "samples_per_s", "mfu") if k in record})
            logger.log(record, state.step)
            pbar.update(1)

            out_of_time = False
            if train.time_limit_minutes is not None:  # decided by rank 0 so that no rank is left waiting
                flag = torch.tensor(float(time.time() - started > 60 * train.time_limit_minutes), device=accelerator.device)
                out_of_time = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
            done = state.step >= train.max_steps or out_of_time
            if train.eval_every and state.step % train.eval_every == 0 and not done:
                last_eval = evaluate()
            if train.save_every and state.step % train.save_every == 0 and not done:
                save()
            if done:
                if out_of_time:
                    accelerator.print(f"time limit reached at step {state.step}")
                break
        else:
            state.epoch += 1
            state.batches_into_epoch = 0
    pbar.close()
    last_eval = evaluate()
    save()
    logger.close()
    return state, last_eval


def batch_size_of(batch) -> int:
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
        return int(first.shape[0])
    return int(batch[0].shape[0])


def finish(accelerator, run_dir: Path, step: int, result: dict, summary: str) -> None:
    """Write the final evaluation, print the summary (rank 0), and shut the process group down cleanly
    (without it a rank occasionally aborted at exit)."""
    if accelerator.is_main_process:
        (Path(run_dir) / "eval_results.json").write_text(json.dumps({"step": step, **result}, indent=2))
        accelerator.print(summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

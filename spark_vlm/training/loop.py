"""The optimisation loop both stages share: gradient accumulation, clipping, logging, periodic evaluation,
atomic checkpoints and exact resume.

One pass of `train_loop` reads top to bottom: for each batch of the epoch, a micro-step (forward, backward,
optimiser step when the accumulation window closes); when a whole optimiser step is done, log it, then evaluate
and save on their cadence. The stage-specific parts (loss, evaluation, export) come from `run.stage`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .checkpoint import checkpoint_filters, load_checkpoint, resolve_resume, save_checkpoint, start_fresh
from .run_logging import MetricsLogger
from .sections import TrainConfig
from .throughput import Throughput

if TYPE_CHECKING:
    from .run import Stage


@dataclass
class Run:
    """What the loop works on, built once by `run.train`."""

    accelerator: object
    model: torch.nn.Module  # prepared: DDP / DeepSpeed engine / compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: torch.utils.data.DataLoader
    stage: Stage
    train: TrainConfig
    grad_clip: float | None
    run_dir: Path
    throughput: Throughput


@dataclass
class LoopState:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batches_into_epoch: int = 0  # loader batches of the current epoch already consumed (for exact resume)


def train_loop(run: Run, resume: str | None = None) -> tuple[LoopState, dict]:
    """Run until `train.max_steps` optimiser steps (or the time limit). Returns the state and the final eval."""
    accelerator, train = run.accelerator, run.train
    save_kwargs, load_kwargs = checkpoint_filters(accelerator, run.stage.trainable_only)
    state = start_or_resume(run, resume, load_kwargs)
    logger = MetricsLogger(run.run_dir, enabled=accelerator.is_main_process,
                           resumed_step=state.step if state.step else None)
    pbar = tqdm(total=train.max_steps, initial=state.step, disable=not accelerator.is_main_process, desc="train",
                dynamic_ncols=True)
    started = time.time()
    micro_losses: list[dict] = []  # the scalars of each micro-batch of the current optimiser step
    run.model.train()
    done = state.step >= train.max_steps
    while not done:
        for batch in epoch_batches(run, state):
            micro_losses.append(micro_step(run, batch))
            state.batches_into_epoch += 1
            run.throughput.update(batch_size_of(batch) * accelerator.num_processes)
            if not accelerator.sync_gradients:
                continue
            record = finish_step(run, state, micro_losses)
            micro_losses = []
            logger.log(record, state.step)
            pbar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "samples_per_s", "mfu") if k in record})
            pbar.update(1)
            out_of_time = time_is_up(accelerator, started, train.time_limit_minutes)
            done = state.step >= train.max_steps or out_of_time
            if done:
                if out_of_time:
                    accelerator.print(f"time limit reached at step {state.step}")
                break
            if train.eval_every and state.step % train.eval_every == 0:
                evaluate(run, state.step, logger)
            if train.save_every and state.step % train.save_every == 0:
                save(run, state, save_kwargs)
        else:  # the epoch ran out before max_steps
            state.epoch += 1
            state.batches_into_epoch = 0
    pbar.close()
    result = evaluate(run, state.step, logger)
    save(run, state, save_kwargs)
    logger.close()
    return state, result


def start_or_resume(run: Run, resume: str | None, load_kwargs: dict) -> LoopState:
    """Restore the newest/named checkpoint, or start a new history in the run directory."""
    accelerator = run.accelerator
    accelerator.register_for_checkpointing(run.scheduler)
    ckpt = resolve_resume(run.run_dir, resume)
    if ckpt is None and accelerator.is_main_process:
        start_fresh(run.run_dir)
    accelerator.wait_for_everyone()
    if ckpt is None:
        if resume not in (None, "latest"):
            raise FileNotFoundError(f"--resume {resume}: nothing to resume")
        return LoopState()
    saved = load_checkpoint(accelerator, ckpt, **load_kwargs)
    accelerator.print(f"resumed from {ckpt} at step {saved['step']}")
    return LoopState(saved["step"], saved["epoch"], saved["batches_into_epoch"])


def epoch_batches(run: Run, state: LoopState):
    """This epoch's batches, in the epoch's own order, skipping those a resumed run has already consumed."""
    loader = run.loader
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(state.epoch)  # seedable sampler: a different, reproducible order each epoch
    if hasattr(getattr(loader, "dataset", None), "set_epoch"):
        loader.dataset.set_epoch(state.epoch)  # e.g. which of an image's captions is used this epoch
    if state.batches_into_epoch:
        return run.accelerator.skip_first_batches(loader, state.batches_into_epoch)
    return loader


def micro_step(run: Run, batch) -> dict[str, torch.Tensor]:
    """Forward and backward one micro-batch; the optimiser steps only when the accumulation window closes
    (Accelerate turns `optimizer.step` into a no-op before that). Returns the micro-batch's scalars."""
    accelerator = run.accelerator
    with accelerator.accumulate(run.model):
        out = run.stage.loss(run.model, batch)
        accelerator.backward(out["loss"])
        if accelerator.sync_gradients and run.grad_clip:
            accelerator.clip_grad_norm_(run.model.parameters(), run.grad_clip)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return {k: v.detach().float() for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}


def finish_step(run: Run, state: LoopState, micro_losses: list[dict]) -> dict:
    """Count a completed optimiser step; returns its log record (scalars averaged over micro-batches and ranks)."""
    run.scheduler.step()
    state.step += 1
    means = {k: torch.stack([m[k] for m in micro_losses]).mean() for k in micro_losses[0]}
    means = {k: run.accelerator.reduce(v, reduction="mean").item() for k, v in means.items()}
    if not all(math.isfinite(v) for v in means.values()):
        raise FloatingPointError(f"non-finite loss at step {state.step}: {means}")
    record = {**means, "lr": run.scheduler.get_last_lr()[0]}
    if state.step % run.train.log_every == 0 or state.step == 1:
        record.update(run.throughput.read())
    return record


def time_is_up(accelerator, started: float, limit_minutes: float | None) -> bool:
    """Decided together (any rank over the limit stops all), so that no rank is left waiting in a collective."""
    if limit_minutes is None:
        return False
    flag = torch.tensor(float(time.time() - started > 60 * limit_minutes), device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def evaluate(run: Run, step: int, logger: MetricsLogger) -> dict:
    run.model.eval()
    with torch.no_grad(), run.accelerator.autocast():
        result = run.stage.evaluate(run.accelerator.unwrap_model(run.model))
    run.model.train()
    logger.log({"kind": "eval", **result}, step)
    return result


def save(run: Run, state: LoopState, save_kwargs: dict) -> None:
    """A full checkpoint for `--resume`, then the stage's loadable export of the current weights."""
    save_checkpoint(run.accelerator, run.run_dir, state.step,
                    {"epoch": state.epoch, "batches_into_epoch": state.batches_into_epoch,
                     **({"frozen": run.stage.frozen} if run.stage.frozen is not None else {})},
                    keep=run.train.keep_checkpoints, **save_kwargs)
    run.stage.export(run.accelerator, run.model, run.run_dir)


def batch_size_of(batch) -> int:
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
        return int(first.shape[0])
    return int(batch[0].shape[0])

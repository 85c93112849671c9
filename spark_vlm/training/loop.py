"""The optimisation loop both stages share: gradient accumulation, clipping, logging, periodic evaluation,
atomic checkpoints and exact resume.

One pass of `train_loop` reads top to bottom: for each batch of the epoch, a micro-step (forward, backward);
when the accumulation window closes, the update (clip, optimiser step), then log it, evaluate and save on their
cadence. The stage-specific parts (loss, evaluation, export) come from `run.stage`.

Non-finite guard: a window with a non-finite loss (checked before backward) or gradient norm skips its update;
the skip is counted and logged with the window's sample ids, `train.max_nonfinite_skips` consecutive skips stop
the run (one line, exit 2), and nothing is saved or exported while any weight is non-finite.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from .checkpoint import checkpoint_filters, list_checkpoints, load_checkpoint, save_checkpoint
from .errors import SetupError
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
    nonfinite_skipped: int = 0  # updates skipped for a non-finite loss or gradient norm, over the whole run
    consecutive_skips: int = 0


def train_loop(run: Run, ckpt: Path | None = None) -> tuple[LoopState, dict]:
    """Run until `train.max_steps` optimiser steps (or the time limit), from the checkpoint `ckpt` if given.
    Returns the state and the final eval."""
    accelerator, train = run.accelerator, run.train
    save_kwargs, load_kwargs = checkpoint_filters(accelerator, run.stage.trainable_only)
    state = LoopState() if ckpt is None else resume_from(run, ckpt, load_kwargs)
    logger = MetricsLogger(run.run_dir, enabled=accelerator.is_main_process,
                           resumed_step=state.step if state.step else None)
    pbar = tqdm(total=train.max_steps, initial=state.step, disable=not accelerator.is_main_process, desc="train",
                dynamic_ncols=True)
    try:  # closed on every exit, so that a stopping run's error line is the last thing printed
        run_steps(run, state, logger, pbar, save_kwargs)
        pbar.close()
        result = evaluate(run, state.step, logger)
        save(run, state, save_kwargs)
    finally:
        pbar.close()
        logger.close()
    return state, result


def run_steps(run: Run, state: LoopState, logger: MetricsLogger, pbar, save_kwargs: dict) -> None:
    """Optimiser steps until `train.max_steps` or the time limit, evaluating and saving on their cadence."""
    accelerator, train = run.accelerator, run.train
    started = time.time()
    micro_losses: list[dict] = []  # the scalars of each micro-batch of the current optimiser step
    window_ids: list = []  # their sample ids, named in the log if the update is skipped
    window_finite = True
    run.model.train()
    done = state.step >= train.max_steps
    while not done:
        fresh_epoch = state.batches_into_epoch == 0
        for batch in epoch_batches(run, state):
            scalars, finite = micro_step(run, batch)
            micro_losses.append(scalars)
            window_ids.append(batch.get("ids") if isinstance(batch, dict) else None)
            window_finite = window_finite and finite
            state.batches_into_epoch += 1
            run.throughput.update(batch_size_of(batch) * accelerator.num_processes)
            if not accelerator.sync_gradients:
                continue
            grad_norm, skipped = update(run, window_finite)
            record = finish_step(run, state, micro_losses, grad_norm, skipped, window_ids)
            micro_losses, window_ids, window_finite = [], [], True
            logger.log(record, state.step)
            pbar.set_postfix({k: f"{record[k]:.3g}" for k in ("loss", "samples_per_s", "mfu")
                              if isinstance(record.get(k), float)})
            pbar.update(1)
            if state.consecutive_skips >= train.max_nonfinite_skips:
                raise SetupError(f"{state.consecutive_skips} consecutive non-finite steps (the last at step "
                                 f"{state.step}, sample ids {record.get('skipped_ids')}); stopping. "
                                 f"{last_checkpoint_note(run.run_dir)}")
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
            if fresh_epoch and state.batches_into_epoch == 0:  # e.g. streamed shards smaller than one batch
                raise SetupError(f"epoch {state.epoch} of the training data gave no full batch of "
                                 f"train.batch_size={train.batch_size}; lower it or add data")
            state.epoch += 1
            state.batches_into_epoch = 0


def resume_from(run: Run, ckpt: Path, load_kwargs: dict) -> LoopState:
    """Restore the full training state of a verified checkpoint (the schedule comes from its JSON state)."""
    saved = load_checkpoint(run.accelerator, ckpt, **load_kwargs)
    run.scheduler.load_state_dict(saved["scheduler"])
    run.accelerator.print(f"resumed from {ckpt} at step {saved['step']}")
    return LoopState(saved["step"], saved["epoch"], saved["batches_into_epoch"], saved["nonfinite_skipped"])


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


def micro_step(run: Run, batch) -> tuple[dict[str, torch.Tensor], bool]:
    """Forward one micro-batch and, if its loss is finite on every rank, backward (inside `accumulate`, so that
    DDP syncs gradients only when the window closes). Returns the micro-batch's scalars and that verdict; all
    ranks agree on it, so no rank is left waiting in a collective of a backward the others skipped."""
    accelerator = run.accelerator
    with accelerator.accumulate(run.model):
        out = run.stage.loss(run.model, batch)
        finite = agreed_finite(accelerator, out["loss"].detach())
        if finite:
            # Under DeepSpeed, Accelerate's backward also steps the engine (which skips fp16 overflows with its
            # own loss scaler); the guard can then only skip a window whose loss is already non-finite, and with
            # grad_accum_steps > 1 a skipped micro-step shifts DeepSpeed's accumulation boundary.
            accelerator.backward(out["loss"])
    return {k: v.detach().float() for k, v in out.items() if torch.is_tensor(v) and v.ndim == 0}, finite


def update(run: Run, loss_finite: bool) -> tuple[float, bool]:
    """Close the accumulation window: clip (the norm is computed even without clipping), then step unless the
    loss or the gradient norm is non-finite. Returns the global gradient norm (nan when the loss already was
    non-finite) and whether the update was skipped. The norm is taken over gradients already summed across
    ranks, so every rank makes the same decision."""
    accelerator = run.accelerator
    grad_norm = math.nan
    if loss_finite:
        norm = accelerator.clip_grad_norm_(run.model.parameters(), run.grad_clip or math.inf)
        grad_norm = math.nan if norm is None else float(norm)  # None: a DeepSpeed engine that has not stepped
    # With fp16's GradScaler an inf gradient is routine: its step skips the update and lowers the scale.
    scaler_handles_it = accelerator.scaler is not None or accelerator.state.deepspeed_plugin is not None
    skipped = not (loss_finite and (math.isfinite(grad_norm) or scaler_handles_it))
    if not skipped:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm, skipped


def finish_step(run: Run, state: LoopState, micro_losses: list[dict], grad_norm: float, skipped: bool,
                window_ids: list) -> dict:
    """Count an optimiser step (skipped or not: the schedule stays in optimiser steps); returns its log record
    (scalars averaged over micro-batches and ranks; a non-finite one is logged as null)."""
    run.scheduler.step()
    state.step += 1
    means = {k: torch.stack([m[k] for m in micro_losses]).mean() for k in micro_losses[0]}
    means = {k: run.accelerator.reduce(v, reduction="mean").item() for k, v in means.items()}
    record = {k: (v if math.isfinite(v) else None) for k, v in means.items()}
    record.update(grad_norm=grad_norm if math.isfinite(grad_norm) else None, lr=run.scheduler.get_last_lr()[0])
    state.consecutive_skips = state.consecutive_skips + 1 if skipped else 0
    if skipped:
        state.nonfinite_skipped += 1
        record.update(nonfinite_skipped=state.nonfinite_skipped, skipped_ids=gathered_ids(run.accelerator, window_ids))
        run.accelerator.print(f"step {state.step}: non-finite loss or gradient norm, update skipped "
                              f"({state.nonfinite_skipped} so far; sample ids {record['skipped_ids']})")
    if state.step % run.train.log_every == 0 or state.step == 1:
        record.update(run.throughput.read())
    return record


def agreed_finite(accelerator, value: torch.Tensor) -> bool:
    """Whether `value` is finite on every rank."""
    bad = torch.tensor(float(not torch.isfinite(value).all()), device=accelerator.device)
    return bool(accelerator.reduce(bad, reduction="sum").item() == 0)


def gathered_ids(accelerator, window_ids: list) -> list | None:
    """The sample ids of a window's micro-batches on every rank (None when the batches carry no ids)."""
    if any(ids is None for ids in window_ids):
        return None
    ids = torch.cat([torch.as_tensor(i, device=accelerator.device) for i in window_ids])
    return accelerator.gather(ids).tolist()


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
    """A full checkpoint for `--resume`, then the stage's loadable export of the current weights; refused (the
    run stops, the last checkpoint stays) if any weight is non-finite."""
    if bad := nonfinite_weights(run.accelerator, run.model):
        raise SetupError(f"step {state.step}: {len(bad)} weight tensor(s) are non-finite (first: {bad[0]}); "
                         f"not saving a checkpoint or export. {last_checkpoint_note(run.run_dir)}")
    save_checkpoint(run.accelerator, run.run_dir, state.step,
                    {"epoch": state.epoch, "batches_into_epoch": state.batches_into_epoch,
                     "nonfinite_skipped": state.nonfinite_skipped, "scheduler": run.scheduler.state_dict(),
                     **({"frozen": run.stage.frozen} if run.stage.frozen is not None else {})},
                    keep=run.train.keep_checkpoints, **save_kwargs)
    run.stage.export(run.accelerator, run.model, run.run_dir)


def nonfinite_weights(accelerator, model: torch.nn.Module) -> list[str]:
    """Names of this rank's parameters holding inf/nan; non-empty on every rank if any rank has one (ZeRO-3
    holds only a shard per rank)."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p.detach()).all()]
    if agreed_finite(accelerator, torch.tensor(math.inf if bad else 0.0)):
        return []
    return bad or ["on another rank"]


def last_checkpoint_note(run_dir: Path) -> str:
    found = list_checkpoints(run_dir)
    return (f"The last checkpoint is {found[-1]} (--resume latest)." if found else
            "No checkpoint was written yet.")


def batch_size_of(batch) -> int:
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
        return int(first.shape[0])
    return int(batch[0].shape[0])

"""The training run both stages share, written once:

  accelerator -> lock the run directory -> the checkpoint to resume (verified) -> seed -> the stage's pieces
  (model, data, loss, evaluation, FLOPs, export) -> a fresh run clears the old run's artefacts -> config.yaml ->
  optimiser, schedule, DataLoader -> torch.compile -> accelerate.prepare -> peak FLOP/s ->
  train_loop -> eval_results.json + summary

A stage is a function `build(cfg, accelerator) -> Stage`; see stage1.py and stage2.py.
"""
from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import frozen_mismatch, resolve_resume
from .config import save_config
from .errors import SetupError
from .loop import Run, train_loop
from .optim import build_optimizer, cosine_schedule
from .run_dir import run_dir_lock, start_fresh
from .sections import TrainConfig
from .throughput import Throughput, measure_peak_flops, resolve_precision


@dataclass
class Stage:
    """What one training stage brings to the shared run."""

    model: torch.nn.Module  # plain (not yet compiled or prepared)
    train_data: torch.utils.data.Dataset  # an IterableDataset is taken as already sharded over ranks
    loss: Callable[[torch.nn.Module, dict], dict[str, torch.Tensor]]  # -> {"loss": scalar, other scalars to log}
    evaluate: Callable[[torch.nn.Module], dict[str, float]]  # unwrapped model -> held-out scalars (every rank)
    flops_per_sample: float  # training FLOPs of one sample, for MFU
    export: Callable[[object, torch.nn.Module, Path], None]  # (accelerator, prepared model, run dir), every rank
    summary: Callable[[int, dict], str]  # (final step, final evaluation) -> what the user reads at the end
    trainable_only: Callable[[str], bool] | None = None  # checkpoints keep only these parameters
    frozen: dict[str, dict] | None = None  # {part: {"source", "sha256"}} of weights that checkpoints leave out
    lr_mult: Callable[[str], float] | None = None  # parameter name -> learning-rate multiplier (default 1)


def train(cfg, build: Callable[[object, object], Stage], resume: str | None = None) -> dict:
    """Train one stage with the experiment config `cfg` (its `train` and `optim` sections drive the run)."""
    t = cfg.train
    # `auto` becomes what runs here, so config.yaml records the precision actually used.
    t.precision = resolve_precision(t.precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    accelerator = make_accelerator(t)
    with run_dir_lock(Path(t.output_dir), accelerator.is_main_process):
        return train_locked(cfg, build, resume, accelerator)


def train_locked(cfg, build, resume: str | None, accelerator) -> dict:
    from accelerate.utils import set_seed

    t = cfg.train
    run_dir = Path(t.output_dir)
    ckpt = resolve_resume(run_dir, resume, say=accelerator.print)
    set_seed(t.seed)
    stage = build(cfg, accelerator)
    if ckpt is not None and (problem := frozen_mismatch(ckpt, stage.frozen)):
        raise SetupError(problem)
    if accelerator.is_main_process:
        if ckpt is None:
            start_fresh(run_dir)
        save_config(cfg, run_dir / "config.yaml")
    accelerator.wait_for_everyone()

    model = stage.model
    if t.grad_checkpointing:
        model.activation_checkpointing_enable()
    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.eps,
                                stage.lr_mult)
    scheduler = cosine_schedule(optimizer, cfg.optim.warmup_steps, t.max_steps, cfg.optim.min_lr_ratio)
    streaming = isinstance(stage.train_data, torch.utils.data.IterableDataset)
    if not streaming and len(stage.train_data) < t.batch_size * accelerator.num_processes:  # real data, now counted
        raise SetupError(f"the training data has {len(stage.train_data)} samples, fewer than one batch "
                         f"(train.batch_size={t.batch_size} x {accelerator.num_processes} process(es)); lower "
                         f"train.batch_size or add data")
    loader = torch.utils.data.DataLoader(stage.train_data, batch_size=t.batch_size, shuffle=not streaming,
                                         drop_last=True, num_workers=t.num_workers)
    deepspeed_from_config(accelerator, cfg.optim.grad_clip)
    if t.compile:
        model = torch.compile(model)
    if streaming:  # the shards are already split over ranks and workers: accelerate must not split again
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    if accelerator.state.deepspeed_plugin is not None:
        accelerator.print(f"DeepSpeed ZeRO-{model.zero_optimization_stage()}: gradient clipping "
                          f"{model.gradient_clipping()} (from the engine)")
    peak = peak_flops(accelerator, t)
    accelerator.print(f"model FLOPs per sample {stage.flops_per_sample / 1e9:.3f} GFLOP; device peak "
                      f"{peak / 1e12:.2f} TFLOP/s ({'configured' if t.peak_tflops else 'measured matmul'})")
    run = Run(accelerator, model, optimizer, scheduler, loader, stage, t, cfg.optim.grad_clip, run_dir,
              Throughput(stage.flops_per_sample, peak))
    state, result = train_loop(run, ckpt)
    finish(accelerator, run_dir, state.step, result, stage.summary(state.step, result))
    return result


def deepspeed_from_config(accelerator, grad_clip: float | None) -> None:
    """Our config decides DeepSpeed's clipping: Accelerate would fill `"gradient_clipping": "auto"` with a fixed
    1.0 at `prepare`, and under DeepSpeed `clip_grad_norm_` is a no-op, so `optim.grad_clip` would be ignored.
    (0 disables clipping in DeepSpeed.) Precision, micro-batch and accumulation are filled from the config by
    Accelerate itself."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        plugin.deepspeed_config["gradient_clipping"] = float(grad_clip or 0.0)


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


def peak_flops(accelerator, train: TrainConfig) -> float:
    """The devices' summed peak FLOP/s: configured, or a matmul measured in the training precision."""
    if train.peak_tflops:
        return train.peak_tflops * 1e12
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.precision, torch.float32)
    return measure_peak_flops(accelerator.device, dtype) * accelerator.num_processes


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

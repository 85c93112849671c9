"""Config sections both trainers share: the optimiser and the training loop."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from .config import check


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio at max_steps
    grad_clip: float | None = 1.0  # max global grad norm; null disables clipping

    def validate(self, prefix: str) -> None:
        check(self.lr > 0, f"{prefix}lr", f"must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"{prefix}weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{prefix}betas",
              f"must be two numbers in [0, 1), got {self.betas}")
        check(self.eps > 0, f"{prefix}eps", f"must be > 0, got {self.eps}")
        check(self.warmup_steps >= 0, f"{prefix}warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(0 <= self.min_lr_ratio <= 1, f"{prefix}min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        check(self.grad_clip is None or self.grad_clip > 0, f"{prefix}grad_clip",
              f"must be > 0 or null, got {self.grad_clip}")


@dataclass
class TrainConfig:
    output_dir: str = "runs/stage1"
    # The stage-1 defaults: the tiny CPU run, ~7 min on 2 AVX2 cores in fp32 (`make demo` must stay within 25 min);
    # 1200 x 128 took ~7 min only on a CPU with bf16 matrix units. Stage 2 sets its own (stage2_config.py).
    batch_size: int = 64  # per process, per micro-step
    grad_accum_steps: int = 1
    max_steps: int = 400  # optimiser steps
    # auto: bf16 autocast where the device has fast bf16 matmuls (CUDA, CPUs with AVX512-BF16/AMX), else fp32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the model
    log_every: int = 10
    eval_every: int = 200  # 0 = only at the end
    save_every: int = 200  # 0 = only at the end
    keep_checkpoints: int = 2
    seed: int = 0
    num_workers: int = 0
    cpu_threads: int | None = None  # CPU only: torch threads per process; null = the cores / local processes
    peak_tflops: float | None = None  # device peak for MFU; null = measure a matmul at start
    time_limit_minutes: float | None = None  # stop early (and save) when the wall clock runs out
    max_nonfinite_skips: int = 10  # this many consecutive updates skipped for a non-finite loss/grad norm stop the run

    def validate(self, prefix: str) -> None:
        for key in ("batch_size", "grad_accum_steps", "max_steps", "log_every", "max_nonfinite_skips"):
            value = getattr(self, key)
            check(value > 0, f"{prefix}{key}", f"must be > 0, got {value}")
        for key in ("eval_every", "save_every", "keep_checkpoints", "num_workers", "seed"):
            value = getattr(self, key)
            check(value >= 0, f"{prefix}{key}", f"must be >= 0, got {value}")
        check(self.seed < 2**32, f"{prefix}seed", f"must be < 2**32 (numpy's limit), got {self.seed}")
        check(bool(self.output_dir), f"{prefix}output_dir", "must not be empty")
        check(self.cpu_threads is None or self.cpu_threads > 0, f"{prefix}cpu_threads",
              f"must be > 0 or null, got {self.cpu_threads}")
        check(self.peak_tflops is None or self.peak_tflops > 0, f"{prefix}peak_tflops",
              f"must be > 0 or null, got {self.peak_tflops}")
        check(self.time_limit_minutes is None or self.time_limit_minutes > 0, f"{prefix}time_limit_minutes",
              f"must be > 0 or null, got {self.time_limit_minutes}")
        import torch

        # On CPU, Accelerate's fp16 silently trains in plain fp32 (no autocast, no loss scaling).
        check(self.precision != "fp16" or torch.cuda.is_available(), f"{prefix}precision",
              "fp16 needs a CUDA device (on CPU it would silently run as fp32); use bf16 or fp32")

    def check_one_batch(self, num_samples: int, key: str) -> None:
        """With `drop_last`, fewer samples than one batch on every process would leave each epoch empty."""
        processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by `accelerate launch` before this runs
        need = self.batch_size * processes
        check(num_samples >= need, key, f"{num_samples} training samples give no full batch of train.batch_size="
              f"{self.batch_size}" + (f" on each of {processes} processes" if processes > 1 else "")
              + f"; need at least {need}")


@dataclass
class SceneDataFields:
    """The built-in scenes' settings, shared by both stages' data sections (equal values reuse one cache)."""

    num_train: int = 30000  # training images (5 captions each)
    num_val: int = 500  # held-out images
    min_objects: int = 1
    max_objects: int = 6
    seed: int = 0
    cache_dir: str | None = None  # null = ~/.cache/spark_vlm/scenes

    def check_scene_fields(self, prefix: str, min_val: int) -> None:
        check(self.num_train > 0, f"{prefix}num_train", f"must be > 0, got {self.num_train}")
        check(self.num_val >= min_val, f"{prefix}num_val", f"must be >= {min_val}, got {self.num_val}")
        check(1 <= self.min_objects <= self.max_objects <= 6, f"{prefix}max_objects",
              f"need 1 <= min_objects <= max_objects <= 6, got {self.min_objects}, {self.max_objects}")

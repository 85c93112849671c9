"""The stage-2 experiment config (Flamingo-style captioner on the frozen stage-1 backbone). The defaults are
the tiny CPU run that `accelerate launch stage2_vlm/train.py` performs with no arguments."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .config import check
from .sections import OptimConfig, SceneDataFields, TrainConfig


@dataclass
class FlamingoModelConfig:
    num_latents: int = 64
    resampler_depth: int = 2
    resampler_heads: int = 4
    resampler_dim_head: int = 32
    cross_attn_every_n_layers: int = 1  # a gated xattn block before every N-th decoder layer
    xattn_heads: int = 4
    xattn_dim_head: int = 32
    ff_mult: float = 2.0
    lora: bool = False  # LoRA adapters on the LM through peft (off, as in Flamingo)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05

    def validate(self, prefix: str) -> None:
        for key in ("num_latents", "resampler_depth", "resampler_heads", "resampler_dim_head",
                    "cross_attn_every_n_layers", "xattn_heads", "xattn_dim_head", "lora_r"):
            value = getattr(self, key)
            check(value > 0, f"{prefix}{key}", f"must be > 0, got {value}")
        check(self.ff_mult > 0, f"{prefix}ff_mult", f"must be > 0, got {self.ff_mult}")
        check(0 <= self.lora_dropout < 1, f"{prefix}lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")


@dataclass
class LMConfig:
    path: str | None = None  # a local Hugging Face causal-LM directory (GPT-2, Llama, OPT, ...); null = stand-in
    # The stand-in, pretrained on the training captions when no path is given (cached):
    standin_arch: Literal["gpt2", "llama"] = "gpt2"
    standin_width: int = 128
    standin_layers: int = 4
    standin_heads: int = 4
    standin_vocab_size: int = 1000
    standin_steps: int = 800
    standin_batch_size: int = 64
    standin_lr: float = 2e-3

    def validate(self, prefix: str) -> None:
        for key in ("standin_width", "standin_layers", "standin_heads", "standin_vocab_size", "standin_steps",
                    "standin_batch_size"):
            value = getattr(self, key)
            check(value > 0, f"{prefix}{key}", f"must be > 0, got {value}")
        check(self.standin_width % self.standin_heads == 0, f"{prefix}standin_heads",
              f"{self.standin_heads} does not divide standin_width {self.standin_width}")
        check(self.standin_lr > 0, f"{prefix}standin_lr", f"must be > 0, got {self.standin_lr}")


@dataclass
class Stage2DataConfig(SceneDataFields):  # the same values as stage 1 reuse its scene cache
    kind: Literal["scenes"] = "scenes"
    max_text_len: int = 48  # LM tokens per training sequence, <image> and <|endofchunk|> included
    object_questions: int = 0  # >0: add this many yes/no object questions per image to the training text

    def validate(self, prefix: str) -> None:
        self.check_scene_fields(prefix, min_val=1)
        check(self.max_text_len >= 4, f"{prefix}max_text_len", f"must be >= 4, got {self.max_text_len}")
        check(self.object_questions >= 0, f"{prefix}object_questions", f"must be >= 0, got {self.object_questions}")


def _stage2_train() -> TrainConfig:
    return TrainConfig(output_dir="runs/stage2", batch_size=32, max_steps=1000, eval_every=250, save_every=250)


def _stage2_optim() -> OptimConfig:
    return OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=50)


@dataclass
class Stage2Config:
    vision_checkpoint: str = "runs/stage1"  # the stage-1 run directory (SparkModel.from_pretrained)
    model: FlamingoModelConfig = field(default_factory=FlamingoModelConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    data: Stage2DataConfig = field(default_factory=Stage2DataConfig)
    optim: OptimConfig = field(default_factory=_stage2_optim)
    train: TrainConfig = field(default_factory=_stage2_train)

    def validate(self, prefix: str = "") -> None:
        check(bool(self.vision_checkpoint), "vision_checkpoint", "must name the stage-1 run directory")

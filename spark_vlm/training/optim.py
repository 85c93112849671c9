"""AdamW with decoupled weight decay and a linear-warm-up + cosine schedule, shared by both stages."""
from __future__ import annotations

import math
from typing import Callable

import torch


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                 lr_mult: Callable[[str], float] | None = None) -> list[dict]:
    """Decay only tensors with >= 2 dims (weights, embeddings), as open_clip does; biases, LayerNorm gains
    and the temperature are left alone (decaying them has no regularising meaning). `lr_mult(name)` scales a
    parameter's learning rate (stage 2's gates); one group per (decay, multiplier)."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (p.ndim >= 2, lr_mult(name) if lr_mult else 1.0)
        groups.setdefault(key, []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": lr * mult}
            for (decay, mult), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]


def build_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.98), eps: float = 1e-6,
                    lr_mult: Callable[[str], float] | None = None):
    return torch.optim.AdamW(param_groups(model, weight_decay, lr, lr_mult), lr=lr, betas=tuple(betas), eps=eps)


def cosine_schedule(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
    """LR multiplier: linear 0 -> 1 over `warmup_steps`, then cosine 1 -> `min_lr_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""The held-out evaluation run during stage-2 training: the captioner's validation losses, and the frozen LM's
text-only loss on the same caption tokens, the baseline that the visual layers must beat."""
from __future__ import annotations

import torch

from ..data.images import to_pixel_values
from ..data.pairs import CaptionedImages
from ..data.prompts import FlamingoPrompts


def model_dtype(model) -> torch.dtype:
    # Under DeepSpeed bf16 the engine casts the model itself, so inputs must follow the parameters' dtype.
    return next(p for p in model.parameters()).dtype


def _first_caption_batches(data: CaptionedImages, prompts: FlamingoPrompts, batch_size: int):
    """Each val image's first caption as (image slice, ids, mask, labels, inner labels = caption tokens 2..n)."""
    first = [int(data.offsets[i]) for i in range(len(data))]
    for start in range(0, len(first), batch_size):
        idx = first[start:start + batch_size]
        ids, mask, labels = (data.text[k][idx] for k in ("input_ids", "attention_mask", "labels"))
        inner = labels.clone()
        inner[:, 1] = -100  # c1 is predicted from <image> alone: no text context to compare with
        inner[inner == prompts.end_id] = -100  # <|endofchunk|> is a token the frozen LM never had
        yield slice(start, start + len(idx)), ids, mask, labels, inner


def _mean_nll(pairs) -> float:
    total = sum(loss * n for loss, n in pairs)
    count = sum(n for _, n in pairs)
    return total / max(count, 1)


@torch.no_grad()
def caption_losses(model, data: CaptionedImages, prompts: FlamingoPrompts, device, batch_size: int = 64) -> dict:
    """Validation losses of the captioner: `val_loss` is the full stage-2 objective (caption + <|endofchunk|>);
    `val_caption_loss` scores caption tokens 2..n only, the tokens `text_only_caption_loss` also scores."""
    dtype = model_dtype(model)
    full, inner_losses = [], []
    for rows, ids, mask, labels, inner in _first_caption_batches(data, prompts, batch_size):
        px = to_pixel_values(data.images[rows].to(device), dtype)[:, None]
        ids, mask = ids.to(device), mask.to(device)
        for lab, out in ((labels, full), (inner, inner_losses)):
            n = int((lab[:, 1:] != -100).sum())
            out.append((model(px, ids, mask, labels=lab.to(device)).loss.float().item(), n))
    return {"val_loss": _mean_nll(full), "val_caption_loss": _mean_nll(inner_losses)}


@torch.no_grad()
def text_only_caption_loss(lm_path: str, data: CaptionedImages, prompts: FlamingoPrompts, batch_size: int = 64,
                           lm_dtype: torch.dtype | str = "auto", device: torch.device | str = "cpu") -> float:
    """The frozen LM alone on the same tokens (caption tokens 2..n given the earlier ones): the baseline that
    stage 2 must beat. A fresh copy of the LM (in the captioner's LM dtype, on the training device) is used, so the
    number cannot drift with training."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(lm_path, dtype=lm_dtype).to(device).eval()
    losses = []
    for _, ids, mask, _, inner in _first_caption_batches(data, prompts, batch_size):
        ids, mask, inner = ids[:, 1:], mask[:, 1:], inner[:, 1:]  # drop <image>: c1..cn <eoc> <pad>...
        ids = ids.masked_fill(ids >= lm.config.vocab_size, prompts.pad_id)  # <eoc> is never scored anyway
        logits = lm(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        target = inner[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), ignore_index=-100,
                                                reduction="sum")
        n = int((target != -100).sum())
        losses.append((nll.item() / max(n, 1), n))
    return _mean_nll(losses)

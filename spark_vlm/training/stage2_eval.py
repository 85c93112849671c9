"""The held-out evaluation run during stage-2 training, every number beside its control:

  val_caption_loss                  the captioner on caption tokens 2..n with each caption's own image
  val_caption_loss_shuffled_images  the same captions, each with *another* val image
  val_caption_loss_blank_image      the same captions with a uniform grey image (the oracle: no objects)
  val_caption_loss_text_only        the frozen LM alone on the same tokens (computed once, before training)
  image_contribution                shuffled - true (nats/token): what reading *this* image adds
  val_object_word_loss[_shuffled_images]  the same, on the object words only (shape nouns, their synonyms and
                                    plurals); object_word_contribution = shuffled - true. A captioner can read
                                    counts and colours (a large image_contribution) while its object words stay
                                    blind: this is the number CHAIR follows.
  gate_attn.<layer>, gate_ff.<layer>   tanh of every cross-attention gate (0 = the block adds nothing)
  distinct_captions                 share of distinct greedy captions over (up to) 100 val images
  val_question_accuracy[_shuffled_images], val_question_yes_ratio   only when the training text has yes/no object
                                    questions (data.object_questions): zero-shot answers on val images, one present
                                    and one absent shape each, in the training format; chance is 50 (balanced), and
                                    with another image the answers should fall to chance if they read the image

A low loss means little by itself: "true < text-only" can come from the captioner's extra parameters and
`<image>`/`<|endofchunk|>` tokens alone; only "true < shuffled" says that the captioner reads the image.
"""
from __future__ import annotations

import random
from contextlib import nullcontext

import torch

import torch.nn.functional as F

from ..data.images import blank_like, to_pixel_values
from ..data.scene_vocab import PLURALS, SHAPE_SYNONYMS, SHAPES
from ..data.text import object_question, question_answer
from ..data.padding import right_pad, trim_right_padding
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
        text = trim_right_padding({k: data.text[k][idx] for k in ("input_ids", "attention_mask", "labels")})
        ids, mask, labels = text["input_ids"], text["attention_mask"], text["labels"]
        inner = labels.clone()
        inner[:, 1] = -100  # c1 is predicted from <image> alone: no text context to compare with
        inner[inner == prompts.end_id] = -100  # <|endofchunk|> is a token the frozen LM never had
        yield slice(start, start + len(idx)), ids, mask, labels, inner


def _mean_nll(pairs) -> float:
    total = sum(loss * n for loss, n in pairs)
    count = sum(n for _, n in pairs)
    return total / max(count, 1)


def object_word_ids(prompts: FlamingoPrompts) -> torch.Tensor:
    """Token ids of the scenes' object words (every shape synonym, singular and plural, as it appears inside a
    caption, after a space) that are one token in this tokenizer: a word split into pieces is left out, since its
    first piece may also start other words."""
    words = {w for names in SHAPE_SYNONYMS.values() for w in names}
    words |= {PLURALS[w] for w in words if w in PLURALS}
    pieces = [prompts.caption_ids(w) for w in sorted(words)]
    return torch.tensor(sorted({p[0] for p in pieces if len(p) == 1}), dtype=torch.long)


@torch.no_grad()
def caption_losses(model, data: CaptionedImages, prompts: FlamingoPrompts, device, batch_size: int = 64,
                   object_ids: torch.Tensor | None = None) -> dict:
    """Validation losses of the captioner: `val_loss` is the full stage-2 objective (caption + <|endofchunk|>);
    `val_caption_loss` scores caption tokens 2..n only, the tokens `text_only_caption_loss` also scores; the same
    with each caption given another val image (image i+1) and with a blank grey image; the object-word losses on
    the tokens `object_ids` (default: `object_word_ids`)."""
    dtype = model_dtype(model)
    n_images = len(data)
    objects = (object_word_ids(prompts) if object_ids is None else object_ids).to(device)
    full, losses = [], {"": [], "_shuffled_images": [], "_blank_image": []}
    object_losses = {"": [], "_shuffled_images": []}
    for rows, ids, mask, labels, inner in _first_caption_batches(data, prompts, batch_size):
        own = data.images[rows]
        images = {"": own, "_shuffled_images": data.images[(torch.arange(rows.start, rows.stop) + 1) % n_images],
                  "_blank_image": blank_like(own)}
        ids, mask = ids.to(device), mask.to(device)
        target = inner[:, 1:].to(device)
        scored, is_object = target != -100, torch.isin(target, objects)
        for suffix, imgs in images.items():
            px = to_pixel_values(imgs.to(device), dtype)[:, None]
            logits = model(px, ids, mask).logits[:, :-1].float()
            if suffix == "":  # the full stage-2 objective (caption + <|endofchunk|>) from the same forward
                full_labels = labels[:, 1:].to(device)
                full.append((F.cross_entropy(logits.flatten(0, 1), full_labels.flatten(), ignore_index=-100).item(),
                             int((full_labels != -100).sum())))
            nll = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100, reduction="none")
            nll = nll.view_as(target)
            losses[suffix].append((nll[scored].mean().item(), int(scored.sum())))
            if suffix in object_losses and is_object.any():
                object_losses[suffix].append((nll[is_object].mean().item(), int(is_object.sum())))
    out = {"val_loss": _mean_nll(full), **{f"val_caption_loss{k}": _mean_nll(v) for k, v in losses.items()},
           **{f"val_object_word_loss{k}": _mean_nll(v) for k, v in object_losses.items()}}
    out["image_contribution"] = out["val_caption_loss_shuffled_images"] - out["val_caption_loss"]
    out["object_word_contribution"] = out["val_object_word_loss_shuffled_images"] - out["val_object_word_loss"]
    return out


def val_questions(shapes: list[set[str]], num_images: int, seed: int = 0) -> list[tuple[int, str, bool]]:
    """(image index, question, is the object present) for the first `num_images` images: one present and one absent
    shape each (seeded), so the set is balanced and always answering one way scores 50."""
    rng = random.Random(seed)
    out = []
    for i, present in enumerate(shapes[:num_images]):
        for pool, label in ((sorted(present), True), (sorted(set(SHAPES) - present), False)):
            if pool:
                out.append((i, object_question(rng.choice(pool)), label))
    return out


@torch.no_grad()
def question_accuracy(model, images: torch.Tensor, shapes: list[set[str]], prompts: FlamingoPrompts, device,
                      num_images: int = 100, batch_size: int = 64) -> dict:
    """Yes/no accuracy (%) in the training text's format ("<image>Question: Is there a star in the image? Answer:",
    the more likely of " yes" / " no" next) with each question's own image and with another image (i+1), and the
    share of "yes" answers with the own image."""
    yes_id, no_id = prompts.caption_ids("yes")[0], prompts.caption_ids("no")[0]  # as POPE reads them
    questions = val_questions(shapes, min(num_images, len(images)))
    dtype, n = model_dtype(model), len(images)
    said_yes = {"": [], "_shuffled_images": []}
    for start in range(0, len(questions), batch_size):
        batch = questions[start:start + batch_size]
        ids, mask = right_pad([prompts.chunk_ids(question_answer(q), closed=False) for _, q, _ in batch], prompts.pad_id)
        ids, mask, last = ids.to(device), mask.long().to(device), mask.sum(1) - 1
        index = torch.tensor([i for i, _, _ in batch])
        for suffix, idx in (("", index), ("_shuffled_images", (index + 1) % n)):
            px = to_pixel_values(images[idx].to(device), dtype)[:, None]
            logits = model(px, ids, mask).logits[torch.arange(len(batch)), last.to(device)].float()
            said_yes[suffix].extend((logits[:, yes_id] > logits[:, no_id]).tolist())
    truth = [label for _, _, label in questions]
    out = {f"val_question_accuracy{k}": 100.0 * sum(a == t for a, t in zip(v, truth)) / max(len(truth), 1)
           for k, v in said_yes.items()}
    out["val_question_yes_ratio"] = 100.0 * sum(said_yes[""]) / max(len(truth), 1)
    return out


def gate_values(model) -> dict:
    """tanh of each cross-attention block's two gates, by decoder layer (gathered first under ZeRO-3)."""
    out = {}
    for layer in model.flamingo_layers():
        block = layer.gated_xattn
        if block is None:
            continue
        gates = [block.attn_gate, block.ff_gate]
        with _gathered(gates):
            out[f"gate_attn.{layer.layer_idx}"] = float(block.attn_gate.detach().float().tanh())
            out[f"gate_ff.{layer.layer_idx}"] = float(block.ff_gate.detach().float().tanh())
    return out


def _gathered(params):
    if any(hasattr(p, "ds_id") for p in params):  # partitioned by DeepSpeed ZeRO-3 (a collective: every rank calls)
        import deepspeed

        return deepspeed.zero.GatheredParameters(params)
    return nullcontext()


@torch.no_grad()
def distinct_caption_share(model, data: CaptionedImages, prompts: FlamingoPrompts, device, num_images: int = 100,
                           batch_size: int = 50, max_new_tokens: int = 20) -> float:
    """Share of distinct greedy captions over the first `num_images` val images: a captioner that ignores the
    image writes the same caption for every image (share 1/num_images)."""
    dtype = model_dtype(model)
    n = min(num_images, len(data))
    captions = []
    for start in range(0, n, batch_size):
        images = data.images[start:min(start + batch_size, n)]
        prompt = prompts.generation_prompts(len(images))
        new_ids = model.generate(to_pixel_values(images.to(device), dtype)[:, None], prompt["input_ids"].to(device),
                                 prompt["attention_mask"].to(device), max_new_tokens=max_new_tokens)
        captions.extend(prompts.decode(row) for row in new_ids)
    return len(set(captions)) / max(n, 1)


@torch.no_grad()
def text_only_caption_loss(lm_path: str, data: CaptionedImages, prompts: FlamingoPrompts, batch_size: int = 64,
                           lm_dtype: torch.dtype | str = "auto", device: torch.device | str = "cpu") -> float:
    """The frozen LM alone on the same tokens (caption tokens 2..n given the earlier ones): the baseline that
    stage 2 must beat. A fresh copy of the LM (in the captioner's LM dtype, on the training device) is used, so the
    number cannot drift with training."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(lm_path, dtype=lm_dtype).to(device).eval()
    bos = prompts.tokenizer.bos_token_id
    losses = []
    for _, ids, mask, _, inner in _first_caption_batches(data, prompts, batch_size):
        if bos is not None:  # <image> -> <bos>: the LM reads "<bos> c1..cn", as the captioner does at initialisation
            ids = ids.masked_fill(ids == prompts.image_id, bos)
        else:  # no start token: drop <image>, the LM reads c1..cn
            ids, mask, inner = ids[:, 1:], mask[:, 1:], inner[:, 1:]
        ids = ids.masked_fill(ids >= lm.config.vocab_size, prompts.pad_id)  # <eoc> is never scored anyway
        logits = lm(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        target = inner[:, 1:].to(device)  # caption tokens 2..n (c1 has no text context in either model)
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), ignore_index=-100,
                                                reduction="sum")
        n = int((target != -100).sum())
        losses.append((nll.item() / max(n, 1), n))
    return _mean_nll(losses)

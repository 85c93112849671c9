"""A stand-in for a pretrained language model on the built-in path.

Flamingo freezes a *pretrained* LM, but nothing can be downloaded here. When no LM directory is configured,
stage 2 first trains a small causal LM on the training captions alone (text only), saves it as an ordinary
Hugging Face directory (model + tokenizer, `AutoModelForCausalLM.from_pretrained`-loadable), caches it by a
hash of the corpus and settings, and then freezes it like any real LM. It knows caption grammar and word
statistics but has never seen an image: exactly the baseline the visual layers must beat.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from ..data.cache import build_once, content_key
from ..data.padding import right_pad
from .config import check
from .throughput import fast_bf16

EOS, PAD = "<|endoftext|>", "<pad>"


def train_bpe_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 style) trained on `texts`, wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False)


def build_lm(arch: str, vocab_size: int, width: int, layers: int, heads: int, max_len: int, pad_id: int, eos_id: int):
    """A small GPT-2 or Llama causal LM from a config (random weights); `max_len` = its context length."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_positions=max_len, n_embd=width, n_layer=layers, n_head=heads,
                         bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)
        return GPT2LMHeadModel(cfg)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=max_len, bos_token_id=eos_id, eos_token_id=eos_id,
                          pad_token_id=pad_id, tie_word_embeddings=True)
        return LlamaForCausalLM(cfg)
    raise ValueError(f"stand-in LM arch must be gpt2 or llama, got {arch!r}")


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad token rows: (input_ids, attention_mask, labels with -100 on padding)."""
    input_ids, mask = right_pad(rows, pad_id)
    return input_ids, mask.long(), input_ids.masked_fill(~mask, -100)


def caption_rows(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """`<bos> caption <eos>` token rows. The start token matters: stage 2 puts `<image>` first and starts it at the
    BOS embedding, so an LM trained with a start token reads the captioner's sequences as its own at
    initialisation (trained from position 0 without one, the extra first token cost it +0.42 nats/token)."""
    return [[tokenizer.bos_token_id] + tokenizer(t)["input_ids"][: max_len - 2] + [tokenizer.eos_token_id]
            for t in texts]


def lm_batches(tokenizer, texts: list[str], batch_size: int, max_len: int, seed: int):
    """Endless batches of `<bos> caption <eos>` sequences, a fresh shuffle each pass over the texts."""
    ids = caption_rows(tokenizer, texts, max_len)
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(ids), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield pad_rows([ids[i] for i in order[start:start + batch_size]], tokenizer.pad_token_id)


@dataclass
class StandinLM:
    """The stand-in LM's settings (stage 2's `lm.standin` section)."""

    arch: Literal["gpt2", "llama"] = "gpt2"
    width: int = 128
    layers: int = 4
    heads: int = 4
    vocab_size: int = 1000  # of the byte-level BPE trained on the captions
    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3

    def validate(self, prefix: str) -> None:
        for key in ("width", "layers", "heads", "vocab_size", "steps", "batch_size"):
            value = getattr(self, key)
            check(value > 0, f"{prefix}{key}", f"must be > 0, got {value}")
        check(self.width % self.heads == 0, f"{prefix}heads", f"{self.heads} does not divide width {self.width}")
        check(self.lr > 0, f"{prefix}lr", f"must be > 0, got {self.lr}")


def pretrain_standin_lm(train_texts: list[str], val_texts: list[str], cache_dir: str | os.PathLike,
                        lm: StandinLM = StandinLM(), max_len: int = 64, context: int = 512, seed: int = 0) -> Path:
    """Train (or reuse from `cache_dir`) a small causal LM on captions; returns its HF directory."""
    arch, vocab_size, width, layers, heads = lm.arch, lm.vocab_size, lm.width, lm.layers, lm.heads
    steps, batch_size, lr = lm.steps, lm.batch_size, lm.lr
    bf16 = not torch.cuda.is_available() and fast_bf16(torch.device("cpu"))  # autocast only where it is fast
    # The cache key: these names and values must not change, or every cached stand-in is retrained.
    settings = dict(arch=arch, vocab_size=vocab_size, width=width, layers=layers, heads=heads, max_len=max_len,
                    context=context, steps=steps, batch_size=batch_size, lr=lr, seed=seed, version=2,
                    precision="bf16" if bf16 else "fp32")

    def train(folder: Path) -> None:
        # Its own RNG stream: the caller's random state must not depend on whether the LM was cached.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            tokenizer = train_bpe_tokenizer(train_texts, vocab_size)
            # The context is longer than any caption so that few-shot prompts (POPE probing) still fit.
            model = build_lm(arch, len(tokenizer), width, layers, heads, context, tokenizer.pad_token_id, tokenizer.eos_token_id)
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.98))
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
            batches = lm_batches(tokenizer, train_texts, batch_size, max_len, seed)
            model.train()
            bar = tqdm(range(steps), desc="stand-in LM", leave=False)
            for _ in bar:
                input_ids, mask, labels = next(batches)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            val_loss = caption_lm_loss(model, tokenizer, val_texts, max_len)

            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            (folder / "standin_lm.json").write_text(json.dumps({**settings, "val_caption_loss": val_loss,
                                                                "note": "stand-in for a pretrained LM, trained on captions only"}, indent=2))

    return build_once(Path(cache_dir) / f"standin-lm-{arch}-{content_key(settings, train_texts)}", train)


@torch.no_grad()
def caption_lm_loss(model, tokenizer, texts: list[str], max_len: int, batch_size: int = 128) -> float:
    """Mean per-token NLL of `caption <eos>` given `<bos>`, the stand-in's own validation number."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        rows = caption_rows(tokenizer, texts[start:start + batch_size], max_len)
        input_ids, mask, _ = pad_rows(rows, tokenizer.pad_token_id)
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten(), reduction="none")
        keep = mask[:, 1:].flatten().bool()
        total += nll[keep].sum().item()
        count += int(keep.sum())
    model.train()
    return total / max(count, 1)

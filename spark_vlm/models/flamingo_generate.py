"""Decoding for SparkFlamingo: greedy, sampling and beam search, written as one explicit loop.

Why not Hugging Face `generate()`: SparkFlamingo is not a `GenerationMixin`, its logits carry two extra columns
from a separate head, ids >= the LM vocabulary need the new embedding table, and the cross-attention context
(media index per token, latents, per-layer K/V) must follow every new token and every beam reorder. Driving the
LM's base model step by step keeps all of that visible in ~150 lines:

* `use_cache=True`: the LM's self-attention keys/values live in a transformers `DynamicCache` that is passed to
  the base model and reordered with `reorder_cache` when beams are re-ranked; each step feeds only the new token.
  `use_cache=False` re-runs the whole sequence at every step (the slow reference).
* `cache_visual=True`: the vision tower + resampler run once per call and each xattn layer projects its K/V once
  (`SparkFlamingo.precompute_visual_kv`); every step reuses them. `cache_visual=False` recomputes both per step.

Prompts must be left-padded (generation appends on the right). Generating `<image>` is disallowed (no image could
go with it), so a generated token's media index is the prompt's last one. A row stops at its first stop token
(`<|endofchunk|>` or the LM's EOS unless `eos_token_id` is given); the stop token is kept in the output and the
rest of the row is filled with `pad_token_id` (default: the tokenizer's pad id, else `<|endofchunk|>`).

The keywords are transformers' (`max_new_tokens`, `num_beams`, `do_sample`, `temperature`, `top_k`, `top_p`,
`eos_token_id` (an id or a list), `pad_token_id`, `length_penalty`); any other is a TypeError. One deliberate
difference: the result holds only the new tokens, not the prompt followed by them.

Interleaved prompts: `pixel_values` [B, T_img, 3, H, W] and up to T_img `<image>` tokens per row; each token reads
the latest `<image>` at or before it, so a generated token reads the row's last image.

`model` is always the SparkFlamingo: flamingo.py imports this module, never the reverse.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import DynamicCache


class _Stepper:
    """Owns the growing sequences and all caches of one generate() call; returns next-token logits."""

    def __init__(self, model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, repeats: int, use_cache: bool, cache_visual: bool):
        self.model = model
        pixel_values = model.with_media_axis(pixel_values)
        # Beam search: every beam of a sample is a row of its own (sample b -> rows b*K .. b*K+K-1).
        self.pixel_values = pixel_values.repeat_interleave(repeats, dim=0)
        self.ids = input_ids.repeat_interleave(repeats, dim=0)
        self.mask = attention_mask.repeat_interleave(repeats, dim=0)
        self.cache_visual = cache_visual
        self.latents = self.kv = None
        if cache_visual:
            self.latents = model.visual_latents(self.pixel_values)
            self.kv = model.precompute_visual_kv(self.latents)
        self.cache = DynamicCache(config=model.lm.config) if use_cache else None
        self.fed = 0  # how many tokens of `self.ids` the KV cache already holds

    def next_logits(self) -> torch.Tensor:
        """Float logits [rows, vocab + 2] for the token after each current sequence."""
        model = self.model
        latents = self.latents if self.cache_visual else model.visual_latents(self.pixel_values)
        media_index = model.media_index(self.ids)
        positions = model.positions_from_mask(self.mask)
        new = slice(self.fed, None) if self.cache is not None else slice(None)
        media = model.media_context(latents, media_index[:, new], self.kv)
        logits = model.decode(self.ids[:, new], self.mask, positions[:, new], media, self.cache, last_only=True)
        if self.cache is not None:
            self.fed = self.ids.shape[1]
        return logits[:, -1].float()

    def append(self, tokens: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Append one token per row, after reordering rows (beam search). Rows only move within a sample's beams,
        whose images are identical, so latents and visual K/V need no reordering."""
        if rows is not None:
            self.ids, self.mask = self.ids[rows], self.mask[rows]
            if self.cache is not None:
                self.cache.reorder_cache(rows)
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)


def default_stop_ids(model: nn.Module) -> list[int]:
    ids = {model.eoc_token_id}
    eos = [model.tokenizer.eos_token_id, model.lm.config.get_text_config().eos_token_id]
    for e in eos:
        for i in (e if isinstance(e, (list, tuple)) else [e]):
            if i is not None and 0 <= i < model.lm_vocab_size:
                ids.add(int(i))
    return sorted(ids)


def sample_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering; one draw per row."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use do_sample=False for greedy decoding)")
    logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token once the tokens ranked above it already hold top_p of the mass (the top one always stays).
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def _greedy_or_sample(stepper: _Stepper, max_new_tokens: int, stop: torch.Tensor, pad_id: int, image_id: int,
                      do_sample: bool, temperature: float, top_k: int, top_p: float,
                      generator: torch.Generator | None) -> torch.Tensor:
    rows = stepper.ids.shape[0]
    finished = torch.zeros(rows, dtype=torch.bool, device=stepper.ids.device)
    out = []
    for _ in range(max_new_tokens):
        logits = stepper.next_logits()
        logits[:, image_id] = float("-inf")
        token = sample_token(logits, temperature, top_k, top_p, generator) if do_sample else logits.argmax(-1)
        token = token.masked_fill(finished, pad_id)  # finished rows only ever get padding
        out.append(token)
        finished |= torch.isin(token, stop)
        if finished.all():
            break
        stepper.append(token)
    return torch.stack(out, dim=1) if out else stepper.ids.new_empty(rows, 0)


def _beam_search(stepper: _Stepper, batch: int, beams: int, max_new_tokens: int, stop_ids: list[int],
                 pad_id: int, image_id: int, length_penalty: float) -> torch.Tensor:
    """Standard beam search (as transformers' with early_stopping=False): a hypothesis is finished by a stop token
    and scored sum(log p) / length**length_penalty; a sample is done once it has `beams` finished hypotheses and
    no running beam can beat the worst of them at the current length."""
    device = stepper.ids.device
    scores = torch.zeros(batch, beams, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first one at step 1
    seqs = stepper.ids.new_empty(batch * beams, 0)
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(batch)]
    done = [False] * batch
    stop = set(stop_ids)
    num_candidates = beams + len(stop)  # enough to keep `beams` candidates after dropping stop tokens

    def add_hypothesis(b: int, score: float, tokens: torch.Tensor) -> None:
        finished[b].append((score, tokens))
        finished[b].sort(key=lambda h: -h[0])
        del finished[b][beams:]

    for step in range(max_new_tokens):
        logits = stepper.next_logits()
        logits[:, image_id] = float("-inf")
        logp = logits.log_softmax(-1)
        vocab = logp.shape[-1]
        candidates = (scores.view(-1, 1) + logp).view(batch, beams * vocab)
        top_scores, top_idx = candidates.topk(num_candidates, dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        length = step + 1
        next_scores = torch.zeros(batch, beams, device=device)
        next_tokens = torch.full((batch, beams), pad_id, dtype=torch.long, device=device)
        next_rows = torch.arange(batch * beams, device=device).view(batch, beams)
        for b in range(batch):
            if done[b]:
                continue
            k = 0
            for rank, (score, idx) in enumerate(zip(top_scores[b], top_idx[b])):
                row, token = b * beams + idx // vocab, idx % vocab
                if token in stop:
                    if rank < beams:  # a stop token only counts if it would have been among the top beams
                        add_hypothesis(b, score / length ** length_penalty,
                                       torch.cat([seqs[row], seqs.new_tensor([token])]))
                    continue
                next_scores[b, k], next_tokens[b, k], next_rows[b, k] = score, token, row
                k += 1
                if k == beams:
                    break
            best_running = next_scores[b, 0].item() / length ** length_penalty
            if len(finished[b]) == beams and finished[b][-1][0] >= best_running:
                done[b] = True
        if all(done):
            break
        rows = next_rows.flatten()
        seqs = torch.cat([seqs[rows], next_tokens.view(-1, 1)], dim=1)
        scores = next_scores
        if step + 1 < max_new_tokens:
            stepper.append(next_tokens.flatten(), rows)
    for b in range(batch):  # out of length: the running beams compete with the finished ones
        if not done[b]:
            for k in range(beams):
                add_hypothesis(b, scores[b, k].item() / max(seqs.shape[1], 1) ** length_penalty, seqs[b * beams + k])

    best = [finished[b][0][1] for b in range(batch)]
    out = torch.full((batch, max(len(t) for t in best)), pad_id, dtype=torch.long, device=device)
    for b, tokens in enumerate(best):
        out[b, : len(tokens)] = tokens
    return out


@torch.no_grad()
def generate(model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor,
             attention_mask: torch.Tensor | None = None, *, max_new_tokens: int = 20, num_beams: int = 1,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             use_cache: bool = True, cache_visual: bool = True, eos_token_id: int | list[int] | None = None,
             pad_token_id: int | None = None, length_penalty: float = 1.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """New token ids [B, T_new] for left-padded prompts (see the module docstring)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("generate() needs left-padded prompts (the last position of every row must be a token)")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if do_sample and num_beams > 1:
        raise ValueError("beam sampling is not supported: use do_sample with num_beams=1, or beam search")
    if eos_token_id is None:
        stop_ids = default_stop_ids(model)
    else:
        stop_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    pad_id = pad_token_id if pad_token_id is not None else model.tokenizer.pad_token_id
    pad_id = model.eoc_token_id if pad_id is None else pad_id
    was_training = model.training
    model.eval()
    try:
        stepper = _Stepper(model, pixel_values, input_ids, attention_mask, num_beams, use_cache, cache_visual)
        if num_beams == 1:
            stop = torch.tensor(stop_ids, dtype=torch.long, device=input_ids.device)
            return _greedy_or_sample(stepper, max_new_tokens, stop, pad_id, model.image_token_id, do_sample,
                                     temperature, top_k, top_p, generator)
        return _beam_search(stepper, input_ids.shape[0], num_beams, max_new_tokens, stop_ids, pad_id,
                            model.image_token_id, length_penalty)
    finally:
        model.train(was_training)

"""Which caption tokens are content: everything but function words and punctuation. The fine-grained loss can be
restricted to them (stage-1 `fine_content_tokens_only`): "a", "of" or "," name no region, yet the paper's loss asks
each of them to pick its own patches too, which a per-position code does as well as any grounding.

Map the list to token ids once (`FunctionTokens(tokenizer)`), then mask batches of ids. Word starts are read from
the pieces as SentencePiece and byte-level BPE mark them (WORD_BOUNDARY): a function-word piece followed by a
piece that continues the same word ("▁a" + "pple") is part of a content word and kept. A function word that the
tokenizer splits into several pieces ("▁th" + "ere", with a tiny vocabulary) is not recognised and stays in; the
stage-1 SentencePiece model trained on the scenes' captions keeps every word whole.
"""
from __future__ import annotations

import string

import torch

from .tokenizer import WORD_BOUNDARY

# Articles, pronouns, auxiliaries, conjunctions and simple prepositions. Spatial words ("left", "above"), counts and
# generic nouns ("shape", "image") stay content: they say something about the image.
FUNCTION_WORDS = frozenset("""
a an the this that these those it its they them their there here
is are was were be been being has have had do does did
and or but nor so as than then
of in on at to with by for from into onto among about
""".split())


class FunctionTokens:
    """Per token id of `tokenizer`: is its piece a function word, is it punctuation, does it start a word."""

    def __init__(self, tokenizer):
        pieces = tokenizer.pieces(list(range(tokenizer.vocab_size)))
        bare = [p.lstrip("".join(WORD_BOUNDARY)).lower() for p in pieces]
        self.function = torch.tensor([b in FUNCTION_WORDS for b in bare])
        self.punctuation = torch.tensor([bool(b) and all(ch in string.punctuation for ch in b) for b in bare])
        self.starts_word = torch.tensor([p.startswith(WORD_BOUNDARY) for p in pieces])

    def content_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: real tokens that are neither punctuation nor a whole function word."""
        ids = input_ids.cpu()
        real = attention_mask.bool().cpu()
        function, punctuation, starts = self.function[ids], self.punctuation[ids], self.starts_word[ids]
        starts[:, 0] = True  # a caption's first piece starts a word even without a marker (byte-level BPE)
        # A piece that continues the word before it: not a word start, not punctuation, a real token.
        continues = ~starts & ~punctuation & real
        next_continues = torch.zeros_like(continues)
        next_continues[:, :-1] = continues[:, 1:]
        whole_function_word = function & starts & ~next_continues
        return (real & ~punctuation & ~whole_function_word).to(attention_mask.device)

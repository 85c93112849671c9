"""Caption tokenizers: a SentencePiece model trained on the training captions (cached by content), or any
SentencePiece model / Hugging Face tokenizer directory given by path.

The text encoder uses no BOS/EOS (as in SPARC): captions become ids padded to a fixed maximum length,
plus an attention mask (True = real token).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from .cache import CACHE_ROOT, build_once, content_key
from .padding import right_pad

WORD_BOUNDARY = ("▁", "Ġ")  # SentencePiece and byte-level BPE mark the start of a word


class CaptionTokenizer:
    """Wraps a SentencePiece processor or a Hugging Face tokenizer behind one small interface."""

    def __init__(self, sp=None, hf=None, source: str | None = None):
        if (sp is None) == (hf is None):
            raise ValueError("give exactly one of a SentencePiece processor or a Hugging Face tokenizer")
        self.sp, self.hf, self.source = sp, hf, source
        if sp is not None:
            self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else 0
            self.vocab_size = sp.get_piece_size()
        else:
            if hf.pad_token_id is None:
                raise ValueError(f"tokenizer at {source} has no pad token; set one before using it here")
            self.pad_id = hf.pad_token_id
            self.vocab_size = len(hf)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | os.PathLike) -> "CaptionTokenizer":
        """A `.model` SentencePiece file, a directory holding `tokenizer.model` from us, or an HF tokenizer dir."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer not found: {path}")
        sp_file = path if path.is_file() else path / "tokenizer.model"
        if sp_file.is_file() and not (path.is_dir() and (path / "tokenizer_config.json").exists()):
            import sentencepiece as spm

            return cls(sp=spm.SentencePieceProcessor(model_file=str(sp_file)), source=str(sp_file))
        from transformers import AutoTokenizer

        return cls(hf=AutoTokenizer.from_pretrained(str(path)), source=str(path))

    def save(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer into a run directory so the checkpoint is self-contained."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.sp is not None:
            (directory / "tokenizer.model").write_bytes(self.sp.serialized_model_proto())
        else:
            self.hf.save_pretrained(str(directory))

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str) -> list[int]:
        if self.sp is not None:
            return self.sp.encode(text)
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        ids = [i for i in ids if i != self.pad_id]
        return self.sp.decode(ids) if self.sp is not None else self.hf.decode(ids)

    def pieces(self, ids: list[int]) -> list[str]:
        """The piece of each id ("▁red"), so sub-word splits and word starts are visible."""
        if self.sp is not None:
            return [self.sp.id_to_piece(i) for i in ids]
        return self.hf.convert_ids_to_tokens(ids)

    def __call__(self, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
        """Batch-encode to `input_ids` [B, max_len] and a bool `attention_mask`; long captions are cut."""
        ids, mask = right_pad([self.encode(text)[:max_len] for text in texts], self.pad_id, max_len)
        return {"input_ids": ids, "attention_mask": mask}


def train_sentencepiece(
    captions: list[str], vocab_size: int = 1000, model_type: str = "bpe", cache_dir: str | os.PathLike | None = None
) -> CaptionTokenizer:
    """Train (or fetch from cache) a SentencePiece model on `captions`.

    The cache key hashes the corpus and the settings, so a changed corpus never reuses a stale model.
    `hard_vocab_limit=False` lets small corpora (the built-in scenes have ~60 words) end below vocab_size.
    """
    import sentencepiece as spm

    settings = {"vocab_size": vocab_size, "model_type": model_type, "version": 1}
    folder = Path(cache_dir) if cache_dir is not None else CACHE_ROOT / "tokenizers"

    def train(tmp: Path) -> None:
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(captions),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            hard_vocab_limit=False,
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,  # no BOS/EOS for the text encoder
            character_coverage=1.0,
            num_threads=1,
            minloglevel=2,
        )
        tmp.write_bytes(buf.getvalue())

    model_file = build_once(folder / f"sp-{content_key(settings, captions)}.model", train)
    return CaptionTokenizer(sp=spm.SentencePieceProcessor(model_file=str(model_file)), source=str(model_file))

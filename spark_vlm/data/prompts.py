"""Stage-2 text: the Flamingo prompt format `<image>{caption}<|endofchunk|>` in the LM's own tokenizer.

Training sequences are right-padded and carry `labels` that score only the caption tokens and the closing
`<|endofchunk|>` (-100 on `<image>` and on padding). Generation prompts are `<image>` (what training used), or
open_flamingo's few-shot captioning prompt (its eval `get_caption_prompt`), left-padded:
    <image>Output: {caption}<|endofchunk|>  (once per shot)  <image>Output:
One deliberate difference: a caption is tokenised as everywhere here, with a leading space (" " + caption, the LM's
word boundary); open_flamingo writes `Output:{caption}`.
"""
from __future__ import annotations

import torch

from .padding import left_pad, right_pad

IMAGE_TOKEN = "<image>"
END_OF_CHUNK = "<|endofchunk|>"
SHOT_PREFIX = "Output:"  # open_flamingo's captioning prompt, before each caption of a few-shot prompt


class FlamingoPrompts:
    """Callable `(captions, max_len) -> {input_ids, attention_mask, labels}` for `CaptionedImages`."""

    def __init__(self, tokenizer, image_token: str = IMAGE_TOKEN, end_token: str = END_OF_CHUNK):
        self.tokenizer = tokenizer
        self.image_id = tokenizer.convert_tokens_to_ids(image_token)
        self.end_id = tokenizer.convert_tokens_to_ids(end_token)
        if self.image_id is None or self.end_id is None or self.image_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer lacks {image_token!r}/{end_token!r}; build the model first "
                             "(it adds both tokens)")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def caption_ids(self, caption: str) -> list[int]:
        return self.tokenizer(" " + caption.strip(), add_special_tokens=False)["input_ids"]

    def chunk_ids(self, text: str, closed: bool = True) -> list[int]:
        """One interleaved chunk `<image>{text}<|endofchunk|>` (open: without the end, a prompt to continue), as
        training writes it; few-shot prompts are such chunks one after another."""
        return [self.image_id] + self.caption_ids(text) + ([self.end_id] if closed else [])

    def __call__(self, captions: list[str], max_len: int) -> dict[str, torch.Tensor]:
        # Cut the caption to keep room for <image> and <|endofchunk|>.
        rows = [[self.image_id] + self.caption_ids(c)[: max_len - 2] + [self.end_id] for c in captions]
        ids, mask = right_pad(rows, self.pad_id, max_len)
        labels = ids.masked_fill(~mask, -100)
        labels[:, 0] = -100  # the caption and its end are scored; never <image>
        return {"input_ids": ids, "attention_mask": mask.long(), "labels": labels}

    def generation_prompts(self, batch_size: int, prefix: str = "") -> dict[str, torch.Tensor]:
        """`<image>{prefix}` for every image of a batch (all the same length, so no padding is needed)."""
        row = [self.image_id] + (self.caption_ids(prefix) if prefix else [])
        ids = torch.tensor([row] * batch_size, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def few_shot_prompts(self, shot_captions: list[list[str]]) -> dict[str, torch.Tensor]:
        """One left-padded row per query: `<image>Output: {caption}<|endofchunk|>` for each of its shot captions,
        then `<image>Output:` (one `<image>` per shot image, then one for the query image)."""
        prefix = self.tokenizer(SHOT_PREFIX, add_special_tokens=False)["input_ids"]
        rows = []
        for captions in shot_captions:
            row = []
            for caption in captions:
                row += [self.image_id, *prefix, *self.caption_ids(caption), self.end_id]
            rows.append(row + [self.image_id, *prefix])
        ids, mask = left_pad(rows, self.pad_id)
        return {"input_ids": ids, "attention_mask": mask.long()}

    def decode_few_shot(self, ids) -> str:
        """As `decode`, then open_flamingo's postprocess_captioning_generation: cut at a further "Output"."""
        return self.decode(ids).split(SHOT_PREFIX.rstrip(":"), 1)[0].strip()

    def decode(self, ids) -> str:
        """Generated ids -> caption text, cut at <|endofchunk|> / EOS / padding."""
        out = []
        for t in ids.tolist() if torch.is_tensor(ids) else ids:
            if t in (self.end_id, self.tokenizer.eos_token_id, self.pad_id):
                break
            out.append(t)
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()

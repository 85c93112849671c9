"""Image-caption pairs as training/eval datasets: images kept as uint8, captions tokenised.

An image has several captions; each epoch every image is seen once, with one of its captions chosen by
(seed, epoch, index) so that the order and the choice are reproducible and resumable, and no batch ever
holds the same image twice (which would be a false negative for the contrastive losses).

  CaptionedImages   in memory (built-in scenes, decoded real data); captions tokenised once
  StreamingPairs    WebDataset shards, streamed; each caption tokenised as it is drawn
"""
from __future__ import annotations

import numpy as np
import torch

from .webdataset_reader import WebDatasetPairs


def image_word_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, caption_image: np.ndarray,
                   num_images: int) -> torch.Tensor:
    """[num_images, K] long: the distinct token ids at the real positions of each image's captions (row i of
    `input_ids` belongs to image caption_image[i]), sorted, -1 padded to the longest bag. The caption-word loss's
    targets (losses.caption_word_loss); memory O(tokens), not O(images * vocabulary)."""
    real = attention_mask.bool()
    image = torch.as_tensor(caption_image, dtype=torch.long)[:, None].expand_as(input_ids)[real]
    ids = input_ids[real].long()
    vocab = int(ids.max()) + 1 if len(ids) else 1
    pairs = torch.unique(image * vocab + ids)  # sorted: by image, then by id
    rows, words = pairs // vocab, pairs % vocab
    counts = torch.bincount(rows, minlength=num_images)
    out = torch.full((num_images, int(counts.max()) if num_images else 0), -1, dtype=torch.long)
    starts = torch.cumsum(counts, 0) - counts
    out[rows, torch.arange(len(pairs)) - starts[rows]] = words
    return out


class CaptionedImages(torch.utils.data.Dataset):
    """In-memory image-caption pairs. `images` uint8 [N, H, W, 3]; `captions` N lists of >= 1 strings.
    With `word_ids=True` each item also carries "word_ids", the image's bag of caption words (image_word_ids)."""

    def __init__(self, images: np.ndarray, captions: list[list[str]], image_ids: list[int],
                 tokenizer, max_len: int, seed: int = 0, negatives: list[list[str | None]] | None = None,
                 word_ids: bool = False):
        if len(images) != len(captions) or len(images) != len(image_ids):
            raise ValueError(f"{len(images)} images but {len(captions)} caption lists / {len(image_ids)} ids")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.captions = captions
        self.image_ids = list(image_ids)
        self.seed = seed
        self.epoch = 0
        # Flatten all captions, tokenise once, remember where each image's captions start.
        flat = [c for caps in captions for c in caps]
        self.offsets = np.cumsum([0] + [len(c) for c in captions])
        if any(len(c) == 0 for c in captions):
            raise ValueError("every image needs at least one caption")
        # Any callable `tokenizer(texts, max_len) -> {name: tensor [num_texts, ...]}` works: stage 1 gets ids and
        # a mask, stage 2's prompt builder adds `labels`.
        self.text = tokenizer(flat, max_len)
        self.input_ids, self.attention_mask = self.text["input_ids"], self.text["attention_mask"]
        if negatives is not None:  # one hard-negative caption (or None) per caption: data/hard_negatives.py
            if [len(n) for n in negatives] != [len(c) for c in captions]:
                raise ValueError("negatives must hold one entry (a caption or None) per caption")
            flat_neg = [n for negs in negatives for n in negs]
            neg = tokenizer([n or "" for n in flat_neg], max_len)
            self.text["neg_input_ids"], self.text["neg_attention_mask"] = neg["input_ids"], neg["attention_mask"]
            self.text["has_negative"] = torch.tensor([n is not None for n in flat_neg])
        self.caption_image = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
        self.word_ids = (image_word_ids(self.input_ids, self.attention_mask, self.caption_image, len(captions))
                         if word_ids else None)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def caption_index(self, i: int) -> int:
        n = self.offsets[i + 1] - self.offsets[i]
        choice = np.random.default_rng([self.seed, self.epoch, i]).integers(n) if n > 1 else 0
        return int(self.offsets[i] + choice)

    def __getitem__(self, i: int) -> dict:
        j = self.caption_index(i)
        item = {"images": self.images[i], **{name: values[j] for name, values in self.text.items()},
                "ids": self.image_ids[i],  # named in the log if this sample's update is skipped
                "index": i}  # the image's row here (stage 2 keys its frozen features by it: feature_cache.py)
        if self.word_ids is not None:
            item["word_ids"] = self.word_ids[i]
        return item


class StreamingPairs(torch.utils.data.IterableDataset):
    """WebDataset pairs -> tokenised training samples; one caption per image, drawn by (seed, epoch, id)."""

    def __init__(self, spec: str, image_size: int, tokenizer, max_len: int, rank: int, world_size: int,
                 seed: int, strict: bool):
        super().__init__()
        self.pairs = WebDatasetPairs(spec, image_size, rank=rank, world_size=world_size, shuffle=True, seed=seed,
                                     strict=strict)
        self.tokenizer, self.max_len, self.seed = tokenizer, max_len, seed

    def set_epoch(self, epoch: int) -> None:
        self.pairs.set_epoch(epoch)

    def __iter__(self):
        for sample in self.pairs:
            caps = sample["captions"]
            pick = np.random.default_rng([self.seed, self.pairs.epoch, sample["image_id"] % 2**32]).integers(len(caps))
            enc = self.tokenizer([caps[pick]], self.max_len)
            yield {"images": torch.from_numpy(sample["image"]), "input_ids": enc["input_ids"][0],
                   "attention_mask": enc["attention_mask"][0], "ids": sample["image_id"]}

"""Image-caption pairs as training/eval tensors: images kept as uint8, captions pre-tokenised once.

An image has several captions; each epoch every image is seen once, with one of its captions chosen by
(seed, epoch, index) so that the order and the choice are reproducible and resumable, and no batch ever
holds the same image twice (which would be a false negative for the contrastive losses).
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm


# Images are scaled to [-1, 1]: the encoders are trained from scratch, so no dataset statistics are needed.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


def to_pixel_values(images_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalised float [B, 3, H, W]. Done on the device, after collation."""
    x = images_uint8.permute(0, 3, 1, 2).to(dtype) / 255.0
    return (x - PIXEL_MEAN) / PIXEL_STD


class CaptionedImages(torch.utils.data.Dataset):
    """In-memory image-caption pairs. `images` uint8 [N, H, W, 3]; `captions` N lists of >= 1 strings."""

    def __init__(self, images: np.ndarray, captions: list[list[str]], image_ids: list[int],
                 tokenizer, max_len: int, seed: int = 0):
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
        self.caption_image = np.repeat(np.arange(len(captions)), [len(c) for c in captions])

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
        return {"images": self.images[i], **{name: values[j] for name, values in self.text.items()}}


def scenes_to_arrays(dataset, desc: str = "scenes") -> tuple[np.ndarray, list[list[str]], list[int]]:
    """Materialise a SceneDataset (or any dataset of {"image", "captions", "image_id"}) into arrays."""
    first = dataset[0]
    images = np.zeros((len(dataset), *first["image"].shape), dtype=np.uint8)
    captions, ids = [], []
    for i in tqdm(range(len(dataset)), desc=desc, leave=False, mininterval=1.0):
        item = first if i == 0 else dataset[i]
        images[i] = item["image"]
        captions.append(list(item["captions"]))
        ids.append(int(item["image_id"]))
    return images, captions, ids

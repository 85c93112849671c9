"""Stage-1 data: a config's `data` section -> (train dataset, held-out dataset, caption tokenizer).

The sources sit behind one config key, `data.kind`:

  scenes       the built-in procedural scenes (default)
  coco         COCO captions JSON (2014/2017) + image folder          data.train_path / data.train_images
  karpathy     Karpathy split JSON (dataset_coco.json, ...) + images   data.train_path / data.train_images
  imagefolder  a folder with metadata.jsonl / metadata.csv             data.train_path
  webdataset   tar shards, streamed (never all in memory)              data.train_path = "shards/{0000..0099}.tar"

Each gives training pairs and a small held-out set for the periodic retrieval eval (`data.val_path`, or
the Karpathy "val" split, or the last `data.num_val` training images when no val set is named). Bad images
and empty captions are skipped and counted (`data.strict=true` stops at the first one, naming the file).
The tokenizer is `data.tokenizer` when given, else a SentencePiece model trained on the training captions.
"""
from __future__ import annotations

import logging

import numpy as np

from .hard_negatives import scene_negatives
from .images import SkipCounter
from .pairs import CaptionedImages, StreamingPairs
from .readers import load_pairs, read_coco_captions, read_imagefolder, read_karpathy
from .scenes import cached_scenes
from .tokenizer import CaptionTokenizer, train_sentencepiece
from .webdataset_reader import WebDatasetPairs, iter_webdataset

log = logging.getLogger(__name__)


def _records(kind: str, path: str, images: str | None, split: str) -> list[dict]:
    if kind == "coco":
        return read_coco_captions(path, images)
    if kind == "karpathy":
        return read_karpathy(path, images, split)
    if kind == "imagefolder":
        return read_imagefolder(path)
    raise ValueError(f"data.kind={kind!r} has no record reader")


def _load(records, image_size: int, strict: bool, what: str):
    counter = SkipCounter(what=f"{what} samples")
    arrays = load_pairs(records, image_size, strict=strict, counter=counter)
    if counter.total:
        log.warning("%s: %s", what, counter.summary())
        print(f"{what}: {counter.summary()}")
    if len(arrays[0]) == 0:
        raise ValueError(f"{what}: no usable image-caption pairs left")
    return arrays


def webdataset_arrays(spec: str, image_size: int, limit: int, strict: bool):
    """The first `limit` decodable samples of a shard set, in memory (for held-out evaluation)."""
    images, captions, ids = [], [], []
    for sample in WebDatasetPairs(spec, image_size, strict=strict):
        images.append(sample["image"])
        captions.append(sample["captions"])
        ids.append(sample["image_id"])
        if len(images) >= limit:
            break
    if not images:
        raise ValueError(f"data.val_path={spec}: no usable samples")
    return np.stack(images), captions, ids


def stage1_arrays(d, image_size: int):
    """(train, val) as (images, captions, ids) arrays; train is None for webdataset (it streams)."""
    if d.kind == "scenes":
        train = cached_scenes("train", d.num_train, image_size, d.min_objects, d.max_objects, d.seed, d.cache_dir)
        val = cached_scenes("val", d.num_val, image_size, d.min_objects, d.max_objects, d.seed, d.cache_dir)
        return train.arrays(), val.arrays()
    if d.kind == "webdataset":
        if not d.val_path:
            raise ValueError("data.val_path: webdataset training needs held-out shards for the retrieval eval")
        return None, webdataset_arrays(d.val_path, image_size, d.num_val, d.strict)
    train = _load(_records(d.kind, d.train_path, d.train_images, "train"), image_size, d.strict, "train")
    if d.val_path or d.kind == "karpathy":
        val_path = d.val_path or d.train_path
        val_images = d.val_images or d.train_images
        val = _load(_records(d.kind, val_path, val_images, "val"), image_size, d.strict, "val")
        val = tuple(x[: d.num_val] for x in val)
    else:  # hold out the last num_val training images
        if len(train[0]) <= d.num_val:
            raise ValueError(f"data.num_val={d.num_val} leaves no training images out of {len(train[0])}")
        val = tuple(x[-d.num_val:] for x in train)
        train = tuple(x[: -d.num_val] for x in train)
    return train, val


def tokenizer_corpus(d, train, limit: int = 200_000) -> list[str]:
    """Captions to train the SentencePiece model on (streamed from the shards for webdataset)."""
    if train is not None:
        return [c for caps in train[1] for c in caps][:limit]
    corpus = []
    for sample in iter_webdataset(d.train_path):
        corpus.extend(sample["captions"])
        if len(corpus) >= limit:
            break
    return corpus


def build_stage1_data(d, accelerator, max_len: int, image_size: int, seed: int, hard_negatives: str = "none",
                      word_ids: bool = False):
    """`data` section -> (train dataset, held-out CaptionedImages, tokenizer). Rank 0 fills the caches first.
    `hard_negatives="shape_swap"` (built-in scenes only) gives every training caption a shape-swapped false
    caption (data/hard_negatives.py), as `neg_input_ids` / `neg_attention_mask` / `has_negative`; `word_ids`
    gives every training image its bag of caption words (the caption-word loss; in-memory kinds only).

    In-memory kinds give a map-style CaptionedImages; webdataset gives a StreamingPairs that shards itself
    over ranks and workers (so it is not passed through `accelerator.prepare`)."""
    with accelerator.main_process_first():
        train_arrays, val_arrays = stage1_arrays(d, image_size)
        if d.tokenizer:
            tokenizer = CaptionTokenizer.load(d.tokenizer)
        else:
            tokenizer = train_sentencepiece(tokenizer_corpus(d, train_arrays), vocab_size=d.vocab_size)
    if train_arrays is None:
        train = StreamingPairs(d.train_path, image_size, tokenizer, max_len, accelerator.process_index,
                               accelerator.num_processes, seed, d.strict)
    else:
        negatives = None
        if hard_negatives == "shape_swap":
            scenes = cached_scenes("train", d.num_train, image_size, d.min_objects, d.max_objects, d.seed, d.cache_dir)
            negatives = scene_negatives([scenes.meta(i) for i in range(len(scenes))],
                                        scenes.config.relation_margin * image_size, seed)
        train = CaptionedImages(*train_arrays, tokenizer=tokenizer, max_len=max_len, seed=seed, negatives=negatives,
                                word_ids=word_ids)
    val = CaptionedImages(*val_arrays, tokenizer=tokenizer, max_len=max_len, seed=seed)
    return train, val, tokenizer

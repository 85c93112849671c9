"""WebDataset tar shards, streamed with the standard library's tarfile (no `webdataset` dependency).

A shard is a plain tar file in which the files of one sample sit next to each other and share a key:

    000123.jpg  000123.txt  000123.json  000124.jpg  000124.txt ...

As in the webdataset library (and `datasets`' webdataset builder), the key is the member path up to
the first "." of its file name, and the rest is the field: "000123.seg.png" is field "seg.png" of
sample "000123". The image is the first of the jpg/jpeg/png/webp fields; the captions come from
txt (the whole text, one caption) or, when there is no txt, from json {"caption"|"text"|"captions"}.

Splitting the work, so that no sample is read twice per epoch: every (rank, dataloader worker)
pair is one consumer, c = rank * num_workers + worker_id out of C = world_size * num_workers.
  * len(shards) >= C: consumer c reads shards c, c + C, c + 2C, ...  (cheap: each tar read once).
    Consumers get unequal sample counts when shards differ in size or len(shards) % C != 0; under
    DDP give every rank the same number of steps (or use a multiple of C equal-sized shards).
  * len(shards) < C: shard-level splitting would leave consumers idle, so every consumer reads
    every shard and keeps every C-th sample instead. Correct but each consumer untars everything
    (unwanted members are skipped, not decoded): write at least C shards for real runs.
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import json
import logging
import os
import re
import tarfile
import zlib

import numpy as np
import torch

from .images import NO_CAPTION, BadSample, SkipCounter, clean_captions, handle_bad, load_image

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
CAPTION_JSON_KEYS = ("caption", "text", "captions")


def _expand_braces(pattern: str) -> list[str]:
    """webdataset's brace notation: "s-{000..002}.tar" -> s-000, s-001, s-002; "{a,b}" -> a, b."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        items = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        return [pattern]                                  # a literal brace pair: leave it alone
    return [out for item in items for out in _expand_braces(head + item + tail)]


def expand_shards(spec) -> list[str]:
    """A path, a glob ("shards/*.tar", sorted), a brace range, or a list of those -> shard paths."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    shards = []
    for s in specs:
        for pattern in _expand_braces(os.fspath(s)):
            if glob.has_magic(pattern):
                shards.extend(sorted(glob.glob(pattern)))
            elif os.path.isfile(pattern):
                shards.append(pattern)
            else:
                raise FileNotFoundError(f"webdataset shard not found: {pattern}")
    if not shards:
        raise FileNotFoundError(f"no webdataset shards match {spec!r}")
    return shards


def split_member_name(name: str) -> tuple[str | None, str | None]:
    """"dir/000123.seg.png" -> ("dir/000123", "seg.png"); names without an extension -> (None, None)."""
    m = re.match(r"^((?:.*/|)[^./]+)\.([^/]*)$", name)
    return (m.group(1), m.group(2)) if m else (None, None)


def stable_image_id(key: str) -> int:
    """Numeric keys (img2dataset writes "000000123") are their own id; others get a 63-bit hash,
    the same in every process and every run (unlike Python's hash())."""
    if key.isdigit() and int(key) < 2**63:
        return int(key)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def _tar_groups(shard: str, keep):
    """Yield (key, {field: bytes}, duplicate_fields) per sample of one shard, in tar order.

    keep() is called once per new key; samples it rejects are skipped without reading their data.
    """
    key, fields, dups, wanted = None, {}, set(), False
    with tarfile.open(shard, "r|*") as tar:                # streaming mode: also reads .tar.gz
        for member in tar:
            if not member.isfile():
                continue
            k, field = split_member_name(member.name)
            if k is None:
                continue
            if k != key:
                if key is not None and wanted:
                    yield key, fields, dups
                key, fields, dups, wanted = k, {}, set(), keep()
            if not wanted:
                continue
            field = field.lower()
            if field in fields:
                dups.add(field)
            else:
                fields[field] = tar.extractfile(member).read()
    if key is not None and wanted:
        yield key, fields, dups


def _captions_of(fields: dict, name: str) -> list:
    if "txt" in fields:
        return [fields["txt"].decode("utf-8", errors="replace")]
    if "json" in fields:
        try:
            meta = json.loads(fields["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadSample(name, "unreadable caption json", str(exc)) from exc
        for k in CAPTION_JSON_KEYS:
            if isinstance(meta, dict) and meta.get(k) is not None:
                return meta[k] if isinstance(meta[k], list) else [meta[k]]
    return []


def iter_webdataset(shard_paths_or_glob, rank: int = 0, world_size: int = 1, worker_id: int = 0,
                    num_workers: int = 1, counter: SkipCounter | None = None, strict: bool = False):
    """Stream this consumer's samples as {"image_id", "key", "path", "image" (bytes), "captions"}.

    Images are NOT decoded here (see WebDatasetPairs). Samples with no image, no usable caption,
    duplicate files, and unreadable (truncated/corrupt) shards are skipped and counted in `counter`
    (strict=True raises instead). "path" is "shard.tar#key", for messages.
    """
    shards = expand_shards(shard_paths_or_glob)
    consumers, me = world_size * num_workers, rank * num_workers + worker_id
    if not (0 <= rank < world_size and 0 <= worker_id < num_workers):
        raise ValueError(f"rank {rank}/{world_size}, worker {worker_id}/{num_workers} out of range")
    counter = counter if counter is not None else SkipCounter(what="webdataset samples")
    if len(shards) >= consumers:
        mine, keep = shards[me::consumers], lambda: True
    else:                                                  # fewer shards than consumers: stride samples
        seen = itertools.count()
        mine, keep = shards, lambda: next(seen) % consumers == me

    for shard in mine:
        try:
            for key, fields, dups in _tar_groups(shard, keep):
                name = f"{shard}#{key}"
                try:
                    if dups:
                        raise BadSample(name, "duplicate file in sample", ", ".join(sorted(dups)))
                    image_field = next((f for f in IMAGE_FIELDS if f in fields), None)
                    if image_field is None:
                        raise BadSample(name, "no image in sample", f"fields {sorted(fields)}")
                    captions = clean_captions(_captions_of(fields, name), name, counter, strict)
                    if not captions:
                        raise BadSample(name, NO_CAPTION)
                except BadSample as exc:
                    handle_bad(exc, counter, strict)
                    continue
                yield {"image_id": stable_image_id(key), "key": key, "path": name,
                       "image": fields[image_field], "captions": captions}
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            # A truncated or corrupt tar: keep what was read before the damage, drop the rest.
            handle_bad(BadSample(shard, "corrupt shard", str(exc)), counter, strict)


def _shuffle_buffer(samples, size: int, rng: np.random.Generator):
    """Approximate shuffle of a stream: hold `size` samples, emit a random one as each new one arrives."""
    buf = []
    for s in samples:
        buf.append(s)
        if len(buf) >= size:
            yield buf.pop(int(rng.integers(len(buf))))
    while buf:
        yield buf.pop(int(rng.integers(len(buf))))


class WebDatasetPairs(torch.utils.data.IterableDataset):
    """Decoded image-caption pairs from WebDataset shards, split over ranks and DataLoader workers.

    Yields {"image": uint8 [S, S, 3], "captions": list[str], "image_id": int, "key": str}; batch
    them with collate_pairs. Bad samples are skipped and counted in self.counter (per process: each
    DataLoader worker counts and logs its own). With shuffle=True the shard order is permuted by
    (seed, epoch) - identically on every consumer, so the split stays disjoint - and samples pass
    a shuffle buffer. Call set_epoch(e) before each epoch (workers must not be persistent, or the
    new epoch never reaches them).
    """

    def __init__(self, shards, image_size: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = False, seed: int = 0, shuffle_buffer: int = 1000,
                 strict: bool = False):
        super().__init__()
        self.shards = expand_shards(shards)
        self.image_size, self.rank, self.world_size = image_size, rank, world_size
        self.shuffle, self.seed, self.shuffle_buffer, self.strict = shuffle, seed, shuffle_buffer, strict
        self.counter = SkipCounter(what="webdataset samples")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = list(self.shards)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(shards))
            shards = [shards[i] for i in order]
        stream = iter_webdataset(shards, self.rank, self.world_size, worker_id, num_workers,
                                 counter=self.counter, strict=self.strict)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker_id])
            stream = _shuffle_buffer(stream, self.shuffle_buffer, rng)
        for sample in stream:
            try:
                image = load_image(sample["image"], self.image_size, name=sample["path"])
            except BadSample as exc:
                handle_bad(exc, self.counter, self.strict)
                continue
            yield {"image": image, "captions": sample["captions"], "image_id": sample["image_id"],
                   "key": sample["key"]}
        if self.counter.total:
            log.warning("rank %d worker %d: %s", self.rank, worker_id, self.counter.summary())


def collate_pairs(batch: list[dict]) -> dict:
    """List of WebDatasetPairs samples -> {"images": uint8 [B, S, S, 3], "captions", "image_ids", "keys"}.
    (torch's default collate cannot batch caption lists of different lengths.)"""
    return {"images": torch.from_numpy(np.stack([b["image"] for b in batch])),
            "captions": [b["captions"] for b in batch],
            "image_ids": torch.tensor([b["image_id"] for b in batch], dtype=torch.int64),
            "keys": [b["key"] for b in batch]}

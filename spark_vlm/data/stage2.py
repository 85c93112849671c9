"""Stage-2 data: the built-in scenes as captioning text in the Flamingo prompt format.

Two steps, because the language model sits between them: the caption arrays come first (the stand-in LM is
trained on them), the datasets last (they are tokenised with the LM's own tokenizer, once the model has added
`<image>` and `<|endofchunk|>` to it).
"""
from __future__ import annotations

import random

from .oracle_tokens import scenes_tokens
from .pairs import CaptionedImages
from .prompts import FlamingoPrompts
from .scene_vocab import SHAPES
from .scenes import cached_scenes
from .text import object_question, question_answer


def add_object_questions(captions: list[list[str]], shapes: list[set[str]], per_image: int, seed: int,
                         vocabulary: tuple[str, ...]) -> list[list[str]]:
    """Optional stage-2 training text: yes/no object questions from the ground truth, in the POPE probe's
    format ("Question: Is there a star in the image? Answer: yes"), half present and half absent objects,
    appended to each image's captions (so the per-epoch caption choice sometimes picks one)."""
    rng = random.Random(seed)
    out = []
    for caps, present in zip(captions, shapes):
        extra = []
        absent = sorted(set(vocabulary) - present)
        for q in range(per_image):
            pool, answer = (sorted(present), "yes") if q % 2 == 0 else (absent, "no")
            if not pool:
                continue
            obj = rng.choice(pool)
            extra.append(question_answer(object_question(obj), answer))
        out.append(list(caps) + extra)
    return out


def stage2_arrays(d, image_size: int, oracle: bool = False):
    """`data` section -> train and val (images, captions, image_ids), with `d.object_questions` yes/no
    questions per training image added to its captions (so POPE-style probing has something to measure).
    With `oracle`, the images are the scenes' ground-truth object tokens (data/oracle_tokens.py) instead."""
    train = cached_scenes("train", d.num_train, image_size, d.min_objects, d.max_objects, d.seed, d.cache_dir)
    val = cached_scenes("val", d.num_val, image_size, d.min_objects, d.max_objects, d.seed, d.cache_dir)
    (images, captions, ids), (val_images, val_captions, val_ids) = train.arrays(), val.arrays()
    if oracle:
        images, val_images = scenes_tokens(train, d.max_objects), scenes_tokens(val, d.max_objects)
    if d.object_questions:
        shapes = [{o["shape"] for o in train.meta(i)["objects"]} for i in range(len(train))]
        captions = add_object_questions(captions, shapes, d.object_questions, d.seed, SHAPES)
    return (images, captions, ids), (val_images, val_captions, val_ids)


def val_shapes(d, image_size: int) -> list[set[str]]:
    """The shape classes present in each val scene (what the yes/no questions ask about)."""
    val = cached_scenes("val", d.num_val, image_size, d.min_objects, d.max_objects, d.seed, d.cache_dir)
    return [{o["shape"] for o in val.meta(i)["objects"]} for i in range(len(val))]


def stage2_datasets(train_arrays, val_arrays, lm_tokenizer, max_len: int, seed: int):
    """(train, val) CaptionedImages in the LM's prompt format, and the FlamingoPrompts that wrote them."""
    prompts = FlamingoPrompts(lm_tokenizer)
    train = CaptionedImages(*train_arrays, tokenizer=prompts, max_len=max_len, seed=seed)
    val = CaptionedImages(*val_arrays, tokenizer=prompts, max_len=max_len, seed=seed)
    return train, val, prompts

"""POPE's questions answered from caption likelihoods instead of a yes/no prompt (`--answer statement`).

A captioner built on a frozen LM can only answer "Is there a star in the image? Answer:" if the LM carries the
asked object to the "Answer:" position; our caption-trained stand-in does not (its states there differ across the 8
shapes by under 1.1% of their norm, and pretraining it on reading-comprehension questions about its own captions
left it at 50% on text alone; README, "Does the captioner read the image?"). So this mode asks the captioner what it
was trained to do, write a caption, and reads the answer off that:

  S[i, o] = log sum_t p(<image> T_t(o) | image i)     T_t = statement templates, e.g. "a {colour} {object}"
  answer "yes"  iff  S[i, o] > log mean_j exp S[j, o]  (j over every image asked about)

i.e. "does this image make a caption about the object likelier than the images asked about do on average": a
pointwise mutual information test against the images' own marginal (domain-conditional PMI, Holtzman et al. 2021,
"Surface form competition"), threshold fixed at 0, no labels used. The marginal is the same for every question about
an object, so the answers of the three POPE settings come from one score table (the settings share their images).
This is a deliberate deviation from POPE's prompt, reported under its own name; `--answer likelihood` (the reference's
question, read as open_flamingo does) stays the default.
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch

from ..data.images import to_pixel_values
from ..data.padding import right_pad
from ..data.scene_vocab import COLORS, SIZE_SYNONYMS
from ..data.text import with_article

SIZE_WORDS = [w for words in SIZE_SYNONYMS.values() for w in words]

STATEMENT_TEMPLATES = {
    "plain": ("a {object}",),
    # How the built-in scenes' captions name one object: "a red star", "a small red star" (scene_captions.py:
    # describe). Chosen on the val scenes with the oracle captioner (POPE random, 200 images), accuracy:
    # "a {object}" 54.5, "a/an {colour} {object}" 89.8, these 91.0 (README, "Does the captioner read the image?").
    "scenes": tuple(with_article(f"{colour} {{object}}") for colour in COLORS)
              + tuple(with_article(f"{size} {colour} {{object}}") for colour in COLORS for size in SIZE_WORDS),
}


def resolve_templates(names) -> tuple[str, ...]:
    """Preset names ("plain", "scenes") and/or the user's own templates, each with one "{object}" ("a photo of a
    {object}"), in order, as one tuple; anything else is refused with the offending entry named."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError(f"--statements needs a preset ({', '.join(STATEMENT_TEMPLATES)}) or a template with "
                         "{object}")
    out: list[str] = []
    for name in names:
        if name in STATEMENT_TEMPLATES:
            out += STATEMENT_TEMPLATES[name]
            continue
        try:
            ok = name.count("{object}") == 1 and bool(name.format(object="x").strip())
        except (IndexError, KeyError, ValueError):  # other braces: "{x}", "{", "{0}"
            ok = False
        if not ok:
            raise ValueError(f"--statements {name!r}: neither a preset ({', '.join(STATEMENT_TEMPLATES)}) nor a "
                             "template with one {object} and no other braces")
        out.append(name)
    return tuple(out)


def statement(template: str, obj: str) -> str:
    """The template filled in, with "a" before a vowel letter made "an" (text.with_article's rule): "an apple"."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", template.format(object=obj))


@torch.no_grad()
def statement_scores(model, prompts, images: list, objects: list[str], templates: tuple[str, ...],
                     batch_size: int = 128) -> torch.Tensor:
    """[len(images), len(objects)]: log sum over templates of p(statement tokens | <image>, image), fp32."""
    rows = [prompts.chunk_ids(statement(t, o), closed=False) for o in objects for t in templates]
    ids, mask = right_pad(rows, prompts.pad_id)
    targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)  # every statement token after <image>
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    ids, mask, targets = ids.to(device), mask.long().to(device), targets.to(device)
    per_image = max(1, batch_size // len(rows))  # images per forward, each with all statements
    scores = []
    for start in range(0, len(images), per_image):
        chunk = torch.as_tensor(np.stack([np.asarray(x) for x in images[start:start + per_image]]))
        n = len(chunk)
        # The vision tower and resampler run once per image, not once per statement (320 with "scenes").
        latents = model.visual_latents(to_pixel_values(chunk.to(device), dtype)[:, None])
        batch_ids, batch_mask = ids.repeat(n, 1), mask.repeat(n, 1)
        media = model.media_context(latents.repeat_interleave(len(rows), 0), model.media_index(batch_ids))
        logits = model.decode(batch_ids, batch_mask, model.positions_from_mask(batch_mask), media)[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.repeat(n, 1).flatten(),
                                                ignore_index=-100, reduction="none").view(n, len(rows), -1)
        logp = -nll.sum(-1).view(n, len(objects), len(templates))
        scores.append(torch.logsumexp(logp, -1).cpu())
    return torch.cat(scores)


def statement_answers(scores: torch.Tensor) -> torch.Tensor:
    """[images, objects] bool: the image raises the object's statement above its mean over the images (PMI > 0)."""
    marginal = torch.logsumexp(scores, 0) - math.log(len(scores))
    return scores > marginal


def answer_by_statements(model, prompts, questions: list[dict], images: dict, templates: tuple[str, ...],
                         batch_size: int = 128, cache: dict | None = None) -> list[str]:
    """"yes"/"no" per question {"image_id", "object"}, all questions scored against the same images' marginal.
    `cache` ({(image_id, object): score}, filled here) lets POPE's settings, which share their images, reuse the
    scores of the same model, images and templates."""
    cache = {} if cache is None else cache
    asked = sorted({q["image_id"] for q in questions}, key=str)
    objects = sorted({q["object"] for q in questions})
    if missing := [i for i in asked if any((i, o) not in cache for o in objects)]:
        table = statement_scores(model, prompts, [images[i] for i in missing], objects, templates, batch_size)
        cache.update({(i, o): table[r, c] for r, i in enumerate(missing) for c, o in enumerate(objects)})
    yes = statement_answers(torch.tensor([[float(cache[i, o]) for o in objects] for i in asked]))
    row, col = {i: k for k, i in enumerate(asked)}, {o: k for k, o in enumerate(objects)}
    return ["yes" if yes[row[q["image_id"]], col[q["object"]]] else "no" for q in questions]

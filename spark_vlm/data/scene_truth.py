"""Is a scene caption true of a scene? The generator's captions (scene_captions.py) read back into claims and
checked against any scene's ground truth (objects with colour, shape, size and centre; the background).

Why: the scenes' captions are templates, so one caption is often true of several images ("two red circles").
Retrieval that counts only the caption's own image as correct then punishes a perfect model; with the truth of
every caption for every image, retrieval can count a hit on any image the caption is true of, and say what a
perfect model could reach.

The claims follow the generator's meaning exactly:
    enumeration  "three shapes: two red circles and a small blue star" -> the total, and every group of the scene
                 listed with its exact count (a single object may carry its size);
    count        "there are two red circles [among five shapes]" -> that group's exact count (and the total);
    relation     "a small red circle is left of a blue star" -> each side names exactly one object (colour, shape,
                 size if given), and their centres differ by at least relation_margin of the image side;
    partial      "a picture of a red circle and two blue stars on a plain background" -> each group's exact count
                 ("a red circle": exactly one red circle), and the background's kind if named;
    colour       "red and blue shapes" / "four shapes, all red" -> exactly those colours (and the total);
    size         "two small shapes and one big object" -> exactly those counts per size (absent sizes: zero).
A caption that does not parse as its kind raises ValueError (never a silent "false").
"""
from __future__ import annotations

import re
from collections import Counter

import numpy as np

from .scene_captions import _BG_WORDS
from .scene_vocab import COLORS, PLURALS, SIZES, WORD_TO_SHAPE, WORD_TO_SIZE
from .text import WORD_TO_NUMBER

_SHAPE_WORDS = {**WORD_TO_SHAPE, **{PLURALS[w]: s for w, s in WORD_TO_SHAPE.items()}}
_BG_KIND = {w: kind for kind, words in _BG_WORDS.items() for w in words}
_TOTAL = r"(\w+) (?:shape|object)s?"
_RELATIONS = {"to the left of": "left", "left of": "left", "to the right of": "right", "right of": "right",
              "above": "above", "below": "below"}


def _number(word: str, caption: str) -> int:
    if word not in WORD_TO_NUMBER:
        raise ValueError(f"caption {caption!r}: {word!r} is not a number word")
    return WORD_TO_NUMBER[word]


def _group(text: str, caption: str) -> tuple[str, str, int, str | None]:
    """"two red circles" / "a small red circle" / "one red circle" -> (colour, shape, count, size or None)."""
    words = text.split()
    if len(words) not in (3, 4) or words[-2] not in COLORS or words[-1] not in _SHAPE_WORDS:
        raise ValueError(f"caption {caption!r}: cannot read {text!r} as a group of shapes")
    size = WORD_TO_SIZE.get(words[1]) if len(words) == 4 else None
    if len(words) == 4 and size is None:
        raise ValueError(f"caption {caption!r}: {words[1]!r} is not a size")
    count = 1 if words[0] in ("a", "an") else _number(words[0], caption)
    return words[-2], _SHAPE_WORDS[words[-1]], count, size


def _groups(listing: str, caption: str) -> list[tuple]:
    return [_group(part, caption) for part in re.split(r", | and ", listing)]


def parse_caption(caption: str, kind: str) -> tuple:
    """A caption of `kind` -> its claims (kind first), as read by `holds`."""
    c = caption.strip()
    if kind == "enumeration":
        m = re.fullmatch(rf"(?:there (?:is|are) )?{_TOTAL}: (.+)", c)
        if m:
            return kind, _number(m.group(1), caption), _groups(m.group(2), caption)
        m = re.fullmatch(rf"(.+), {_TOTAL} in total", c)
        if not m:
            raise ValueError(f"caption {caption!r} is not an enumeration")
        return kind, _number(m.group(2), caption), _groups(m.group(1), caption)
    if kind == "count":
        m = re.fullmatch(rf"(?:there (?:is|are) |an image with )?(.+?)(?: among {_TOTAL})?", c)
        return kind, _group(m.group(1), caption), _number(m.group(2), caption) if m.group(2) else None
    if kind == "relation":
        rels = "|".join(sorted(_RELATIONS, key=len, reverse=True))
        m = re.fullmatch(rf"(?:there is )?(.+?)(?: is)? ({rels}) (.+)", c)
        if not m:
            raise ValueError(f"caption {caption!r} is not a relation")
        return kind, _group(m.group(1), caption), _RELATIONS[m.group(2)], _group(m.group(3), caption)
    if kind == "partial":
        m = re.fullmatch(r"(?:a picture of )?(.+?)(?: on an? (\w+) background)?", c)
        bg = m.group(2)
        if bg is not None and bg not in _BG_KIND:
            raise ValueError(f"caption {caption!r}: {bg!r} is not a background word")
        return kind, _groups(m.group(1), caption), _BG_KIND.get(bg)
    if kind == "colour":
        for pattern, all_of in ((r"a single (\w+) shape|one (\w+) object", "single"),
                                (r"only (\w+) shapes|" + rf"{_TOTAL}, all (\w+)", "all"),
                                (r"(.+) shapes|shapes in (.+)|" + rf"{_TOTAL} in (.+)", "set")):
            m = re.fullmatch(pattern, c)
            if m:
                g = [x for x in m.groups() if x is not None]
                total = 1 if all_of == "single" else _number(g[0], caption) if len(g) == 2 else None
                colours = re.split(r", | and ", g[-1])
                if any(col not in COLORS for col in colours):
                    raise ValueError(f"caption {caption!r}: not a list of colours")
                return kind, total, frozenset(colours)
        raise ValueError(f"caption {caption!r} is not a colour caption")
    if kind == "size":
        counts = {}
        for part in re.split(r", | and ", c):
            m = re.fullmatch(r"(\w+) (\w+) (?:shape|object)s?", part)
            if not m or m.group(2) not in WORD_TO_SIZE:
                raise ValueError(f"caption {caption!r}: cannot read {part!r} as a size count")
            counts[WORD_TO_SIZE[m.group(2)]] = _number(m.group(1), caption)
        return kind, counts
    raise ValueError(f"unknown caption kind {kind!r}")


def _referent(objects: list[dict], group: tuple) -> dict | None:
    """The one object a relation side names (colour, shape, size if given), or None if not exactly one."""
    color, shape, _, size = group
    match = [o for o in objects if o["color"] == color and o["shape"] == shape and size in (None, o["size"])]
    return match[0] if len(match) == 1 else None


def _summary(scene: dict) -> dict:
    objects = scene["objects"]
    return {"groups": Counter((o["color"], o["shape"]) for o in objects), "sizes": Counter(o["size"] for o in objects),
            "colours": {o["color"] for o in objects}, "total": len(objects)}


def holds(claims: tuple, scene: dict, relation_margin: float, summary: dict | None = None) -> bool:
    """Whether every claim is true of `scene` (generate_scene's output; objects need colour, shape, size, centre).
    `relation_margin`: the generator's margin in pixels (SceneConfig.relation_margin * image side);
    `summary`: `_summary(scene)`, when the caller checks many captions against one scene."""
    summary = summary or _summary(scene)
    objects, groups, kind = scene["objects"], summary["groups"], claims[0]

    def group_true(g):
        color, shape, count, size = g
        if groups[(color, shape)] != count:
            return False
        return size is None or any(o["size"] == size for o in objects if (o["color"], o["shape"]) == (color, shape))

    if kind == "enumeration":
        _, total, listed = claims
        return (total == summary["total"] and all(map(group_true, listed)) and len(listed) == len(groups)
                and {(g[0], g[1]) for g in listed} == set(groups))
    if kind == "count":
        _, group, total = claims
        return group_true(group) and total in (None, summary["total"])
    if kind == "relation":
        _, ga, rel, gb = claims
        a, b = _referent(objects, ga), _referent(objects, gb)
        if a is None or b is None or a is b:
            return False
        axis, sign = {"left": (0, 1), "right": (0, -1), "above": (1, 1), "below": (1, -1)}[rel]
        return sign * (b["center"][axis] - a["center"][axis]) >= relation_margin
    if kind == "partial":
        _, listed, bg = claims
        return all(map(group_true, listed)) and bg in (None, scene["background"])
    if kind == "colour":
        _, total, colours = claims
        return colours == summary["colours"] and total in (None, summary["total"])
    if kind == "size":
        return all(summary["sizes"][s] == claims[1].get(s, 0) for s in SIZES)
    raise ValueError(f"unknown caption kind {kind!r}")


def truth_matrix(captions: list[str], kinds: list[str], scenes: list[dict], relation_margin: float) -> np.ndarray:
    """Bool [num_scenes, num_captions]: caption j (of kind kinds[j]) is true of scene i. Each distinct caption is
    parsed and checked once per scene."""
    distinct = list(dict.fromkeys(zip(captions, kinds)))
    claims = [parse_caption(c, k) for c, k in distinct]
    column = {key: j for j, key in enumerate(distinct)}
    table = np.zeros((len(scenes), len(distinct)), bool)
    for i, scene in enumerate(scenes):
        summary = _summary(scene)
        table[i] = [holds(cl, scene, relation_margin, summary) for cl in claims]
    return table[:, [column[key] for key in zip(captions, kinds)]]

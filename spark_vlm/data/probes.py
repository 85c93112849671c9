"""SugarCrepe-style fine-grained probes built from ground-truth objects.

For each image we write a caption that is TRUE of the image (from its objects) and a hard negative
that changes exactly one detail and is FALSE of the image. A model passes an item when it scores the
positive above every negative, so chance is 1 / (1 + #negatives) (here one negative: 50%).

Probe types (every item has one negative):
    count          "two red circles"                    -> "three red circles"     (a count changed)
    color_binding  "one red circle and two blue squares" -> "one blue circle and two red squares"
                   (colours swapped between two groups: exactly the same bag of words; both swapped
                   (colour, shape) pairs are absent from the image)
    relation_swap  "a red circle left of a blue square" -> "a blue square left of a red circle"
                   (same bag of words; the boxes do not overlap along the relation's axis, and both
                   objects are the only ones of their kind, so the phrase is unambiguous)
    absent_object  "a red circle" -> "a red circle and a green star" (no star of any colour in the image)

Objects are dicts {name, color (or None), bbox [x, y, w, h], crowd}: built-in scene objects via
`scene_objects`, COCO instances via `coco_objects` (real COCO has no colours, so it gets no
color_binding probes; the scenes' COCO export keeps a "color" key, which is used). A probe type that
cannot be built for an image (one object only, no two objects apart, ...) is skipped and counted.
Everything is deterministic in (seed, image_id, probe type).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from .scene_vocab import COLORS, PLURALS
from .text import NUMBER_WORDS, with_article

PROBE_TYPES = ("count", "color_binding", "relation_swap", "absent_object")
# Plurals of the COCO category names that do not just take an "s" (the scene shapes use PLURALS).
_IRREGULAR_PLURALS = {"person": "people", "sheep": "sheep", "skis": "skis", "scissors": "scissors",
                      "knife": "knives", "mouse": "mice", "bus": "buses", "wine glass": "wine glasses",
                      "couch": "couches", "sandwich": "sandwiches", "bench": "benches",
                      "toothbrush": "toothbrushes", "skateboard": "skateboards", "fox": "foxes"}


def _plural(name: str) -> str:
    if name in PLURALS:
        return PLURALS[name]
    if name in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[name]
    return name + ("es" if name.endswith(("s", "x", "ch", "sh")) else "s")


def phrase(count: int, color: str | None, name: str, numeric: bool = False) -> str:
    """"two red circles"; a single object reads "a red circle" unless `numeric` ("one red circle")."""
    noun = name if count == 1 else _plural(name)
    core = f"{color} {noun}" if color else noun
    return with_article(core) if count == 1 and not numeric else f"{NUMBER_WORDS[count - 1]} {core}"


# ------------------------------------------------------------------------------------------ objects
def scene_objects(scene: dict) -> list[dict]:
    """A built-in scene (generate_scene's output) -> probe objects."""
    return [{"name": o["shape"], "color": o["color"], "bbox": list(o["bbox"]), "crowd": False}
            for o in scene["objects"]]


def coco_objects(instances: dict) -> tuple[dict[int, list[dict]], list[str]]:
    """A COCO instances JSON (already parsed) -> ({image_id: objects}, category names).

    Reads the JSON itself rather than readers.read_coco_instances so that the optional per-object
    "color" key of the scenes' COCO export survives.
    """
    names = {c["id"]: c["name"] for c in instances["categories"]}
    objects = {int(img["id"]): [] for img in instances.get("images", [])}
    for ann in instances.get("annotations", []):
        objects.setdefault(int(ann["image_id"]), []).append({
            "name": names[ann["category_id"]], "color": ann.get("color"), "bbox": list(ann["bbox"]),
            "crowd": bool(ann.get("iscrowd", 0))})
    return objects, [c["name"] for c in instances["categories"]]


# ------------------------------------------------------------------------------------------ builders
def _groups(objects: list[dict]) -> dict[tuple, list[dict]]:
    """Objects grouped by (colour, name): the unit a caption can count."""
    groups: dict[tuple, list[dict]] = {}
    for o in objects:
        groups.setdefault((o["color"], o["name"]), []).append(o)
    return groups


def _count(objects, rng, vocabulary, colors):
    # Crowd annotations hide an unknown number of instances; counts up to 9 so n + 1 has a word.
    ok = [k for k, g in _groups(objects).items() if len(g) <= 9 and not any(o["crowd"] for o in g)]
    if not ok:
        return None
    color, name = ok[rng.integers(len(ok))]
    n = len(_groups(objects)[(color, name)])
    wrong = [m for m in (n - 1, n + 1) if m >= 1]
    m = wrong[rng.integers(len(wrong))]
    return phrase(n, color, name, numeric=True), [phrase(m, color, name, numeric=True)]


def _color_binding(objects, rng, vocabulary, colors):
    groups = _groups(objects)
    keys = [k for k in groups if k[0] is not None and len(groups[k]) <= 10]
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]
             if a[0] != b[0] and a[1] != b[1]                       # different colours and shapes
             and (b[0], a[1]) not in groups and (a[0], b[1]) not in groups]  # swapped pairs absent
    if not pairs:
        return None
    (c1, n1), (c2, n2) = pairs[rng.integers(len(pairs))]
    k1, k2 = len(groups[(c1, n1)]), len(groups[(c2, n2)])
    # Number words, never articles: "a"/"an" would change with the colour and break the bag of words.
    positive = f"{phrase(k1, c1, n1, numeric=True)} and {phrase(k2, c2, n2, numeric=True)}"
    negative = f"{phrase(k1, c2, n1, numeric=True)} and {phrase(k2, c1, n2, numeric=True)}"
    return positive, [negative]


def _relation_swap(objects, rng, vocabulary, colors):
    groups = _groups(objects)
    unique = [g[0] for g in groups.values() if len(g) == 1 and not g[0]["crowd"]]
    pairs = []
    for a in unique:
        for b in unique:
            ax, ay, aw, ah = a["bbox"]
            bx, by, _, _ = b["bbox"]
            if ax + aw <= bx:                                   # a entirely left of b
                pairs.append((a, "left of", b))
            if ay + ah <= by:                                   # a entirely above b
                pairs.append((a, "above", b))
    if not pairs:
        return None
    a, rel, b = pairs[rng.integers(len(pairs))]
    pa, pb = phrase(1, a["color"], a["name"]), phrase(1, b["color"], b["name"])
    return f"{pa} {rel} {pb}", [f"{pb} {rel} {pa}"]


def _absent_object(objects, rng, vocabulary, colors):
    present = {o["name"] for o in objects}
    absent = [name for name in vocabulary if name not in present]
    groups = _groups(objects)
    keys = [k for k in groups if len(groups[k]) <= 10]
    if not absent or not keys:
        return None
    color, name = keys[rng.integers(len(keys))]
    positive = phrase(len(groups[(color, name)]), color, name)
    new = absent[rng.integers(len(absent))]
    new_color = colors[rng.integers(len(colors))] if color is not None else None  # colours if the data has them
    return positive, [f"{positive} and {phrase(1, new_color, new)}"]


_BUILDERS = {"count": _count, "color_binding": _color_binding, "relation_swap": _relation_swap,
             "absent_object": _absent_object}


def build_probes(objects_by_image: dict[int, list[dict]], vocabulary: Sequence[str], seed: int = 0,
                 types: Sequence[str] = PROBE_TYPES,
                 colors: Sequence[str] = tuple(COLORS)) -> tuple[list[dict], dict[str, int]]:
    """Probe items for every image and probe type, and how many (image, type) pairs were skipped.

    `vocabulary`: every object name of the dataset (absent objects are drawn from it); `colors`: the
    colour words for an added absent object. Items are {image_id, type, positive, negatives, chance}.
    """
    unknown = set(types) - set(_BUILDERS)
    if unknown:
        raise ValueError(f"unknown probe types {sorted(unknown)}; choose from {PROBE_TYPES}")
    items, skipped = [], Counter({t: 0 for t in types})
    for image_id in sorted(objects_by_image):
        objects = objects_by_image[image_id]
        for t in types:
            rng = np.random.default_rng([seed, int(image_id), PROBE_TYPES.index(t)])
            built = _BUILDERS[t](objects, rng, list(vocabulary), list(colors)) if objects else None
            if built is None:
                skipped[t] += 1
                continue
            positive, negatives = built
            items.append({"image_id": int(image_id), "type": t, "positive": positive,
                          "negatives": negatives, "chance": 1.0 / (1 + len(negatives))})
    return items, dict(skipped)


def probe_accuracy(items: list[dict], positive_scores, negative_scores) -> dict:
    """Per probe type: accuracy (percent of items whose positive scores strictly above all negatives;
    a tie counts as a miss), chance (percent) and number of items; plus the macro mean over types.

    `positive_scores[i]` is item i's positive score, `negative_scores[i]` the list of its negatives' scores.
    """
    if not len(items) == len(positive_scores) == len(negative_scores):
        raise ValueError("need one positive score and one list of negative scores per item")
    per_type: dict[str, dict] = {}
    for item, pos, negs in zip(items, positive_scores, negative_scores):
        stats = per_type.setdefault(item["type"], {"correct": 0, "num_items": 0, "chance_sum": 0.0})
        stats["correct"] += int(float(pos) > max(float(s) for s in negs))
        stats["num_items"] += 1
        stats["chance_sum"] += item["chance"]
    order = [t for t in PROBE_TYPES if t in per_type] + [t for t in per_type if t not in PROBE_TYPES]
    out = {t: {"accuracy": 100.0 * per_type[t]["correct"] / per_type[t]["num_items"],
               "chance": 100.0 * per_type[t]["chance_sum"] / per_type[t]["num_items"],
               "num_items": per_type[t]["num_items"]} for t in order}
    accs = [v["accuracy"] for v in out.values()]
    return {"per_type": out, "mean_accuracy": float(np.mean(accs)) if accs else float("nan")}

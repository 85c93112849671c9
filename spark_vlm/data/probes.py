"""SugarCrepe-style fine-grained probes built from ground-truth objects, balanced against text-only shortcuts.

For each image we write a caption that is TRUE of the image (from its objects) and a hard negative
that changes exactly one detail and is FALSE of the image. A model passes an item when it scores the
positive above every negative, so chance is 1 / (1 + #negatives) (here one negative: 50%).

Probe types (every item has one negative):
    count          "two red circles"                    -> "one red circle" / "three red circles"
                   (the count changed by one; groups of two or more are preferred, so both directions occur)
    color_binding  "one red circle and two blue squares" -> "one blue circle and two red squares"
                   (colours swapped between two groups: exactly the same bag of words; both swapped
                   (colour, shape) pairs are absent from the image)
    relation_swap  "a red circle left of a blue square" -> "a blue square left of a red circle"
                   (same bag of words; the boxes do not overlap along the relation's axis, and both
                   objects are the only ones of their kind, so the phrase is unambiguous)
    absent_object  "two red circles" -> "two red stars" (the noun replaced by one with no instance in the image;
                   same count and colour, so the same number of words)

Text-only shortcuts are removed by balancing (`_balance`): an item's direction is (the number its positive
states, the number its negative states, the sign of their length difference); for every direction we keep
exactly as many items as its mirror (the roles swapped) has, dropping the larger side's surplus at random
(counted as skipped). So even "two beats one" (any rule on the pair of numbers) scores chance, and
"the shorter caption wins" and "the smaller number wins" score exactly chance on every type (ties, where
both captions agree, count half: a heuristic that cannot decide guesses). `max_count` caps the number words
(the scenes' captions never say more than six, so their probes never do either: no word unseen in training).

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

from .coco_json import coco_entries
from .scene_vocab import COLORS, PLURALS
from .text import NUMBER_WORDS, WORD_TO_NUMBER, with_article

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


def coco_objects(instances: dict, where: str = "instances") -> tuple[dict[int, list[dict]], list[str]]:
    """A COCO instances JSON (already parsed) -> ({image_id: objects}, category names). A malformed entry raises
    one ValueError naming `where` (the file), the entry and the field.

    Reads the JSON itself rather than readers.read_coco_instances so that the optional per-object
    "color" key of the scenes' COCO export survives.
    """
    categories = coco_entries(instances, "categories", where, ids=("id",), strings=("name",))
    names = {c["id"]: c["name"] for c in categories}
    images = coco_entries(instances, "images", where, ids=("id",)) if "images" in instances else []
    objects = {int(img["id"]): [] for img in images}
    annotations = coco_entries(instances, "annotations", where, ids=("image_id", "category_id"), others=("bbox",)) \
        if "annotations" in instances else []
    for i, ann in enumerate(annotations):
        if ann["category_id"] not in names:
            raise ValueError(f"{where}: annotations[{i}].category_id {ann['category_id']!r} is not a category")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{where}: annotations[{i}].bbox is {bbox!r}; expected [x, y, width, height]")
        objects.setdefault(int(ann["image_id"]), []).append({
            "name": names[ann["category_id"]], "color": ann.get("color"), "bbox": list(bbox),
            "crowd": bool(ann.get("iscrowd", 0))})
    return objects, [c["name"] for c in categories]


# ------------------------------------------------------------------------------------------ builders
def _groups(objects: list[dict]) -> dict[tuple, list[dict]]:
    """Objects grouped by (colour, name): the unit a caption can count."""
    groups: dict[tuple, list[dict]] = {}
    for o in objects:
        groups.setdefault((o["color"], o["name"]), []).append(o)
    return groups


def _count(objects, rng, vocabulary, colors, max_count):
    # Crowd annotations hide an unknown number of instances; the true and the wrong count both need a word.
    groups = _groups(objects)
    ok = [k for k, g in groups.items() if len(g) <= max_count and not any(o["crowd"] for o in g)]
    several = [k for k in ok if len(groups[k]) > 1]   # only these can go down: prefer them, or "one" always wins
    ok = several or ok
    if not ok:
        return None
    color, name = ok[rng.integers(len(ok))]
    n = len(groups[(color, name)])
    wrong = [m for m in (n - 1, n + 1) if 1 <= m <= max_count]
    if not wrong:
        return None
    m = wrong[rng.integers(len(wrong))]
    return phrase(n, color, name, numeric=True), [phrase(m, color, name, numeric=True)]


def _color_binding(objects, rng, vocabulary, colors, max_count):
    groups = _groups(objects)
    keys = [k for k in groups if k[0] is not None and len(groups[k]) <= max_count]
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


def _relation_swap(objects, rng, vocabulary, colors, max_count):
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


def _absent_object(objects, rng, vocabulary, colors, max_count):
    present = {o["name"] for o in objects}
    absent = [name for name in vocabulary if name not in present]
    groups = _groups(objects)
    keys = [k for k in groups if len(groups[k]) <= max_count]
    if not absent or not keys:
        return None
    color, name = keys[rng.integers(len(keys))]
    n, new = len(groups[(color, name)]), absent[rng.integers(len(absent))]
    return phrase(n, color, name), [phrase(n, color, new)]


_BUILDERS = {"count": _count, "color_binding": _color_binding, "relation_swap": _relation_swap,
             "absent_object": _absent_object}


# ------------------------------------------------------------------------------------------ text-only signals
def stated_number(text: str) -> int:
    """The sum of the numbers a caption states ("a"/"an" count as one): what "the smaller number wins" reads."""
    return sum(WORD_TO_NUMBER.get(w, 1 if w in ("a", "an") else 0) for w in text.split())


def _direction(positive: str, negative: str) -> tuple[int, int, int]:
    """What the heuristics see of an item: the numbers stated by the positive and by the negative, and the sign
    of their length difference. Its mirror (the roles swapped) is `_mirror`."""
    return stated_number(positive), stated_number(negative), int(np.sign(len(positive) - len(negative)))


def _mirror(d: tuple[int, int, int]) -> tuple[int, int, int]:
    return d[1], d[0], -d[2]


def _balance(items: list[dict], rng) -> tuple[list[dict], int]:
    """Keep, for every direction, as many items as its mirror has (a random subset of the larger side); items
    that are their own mirror (same numbers, same length) all stay. Returns (kept items in order, #dropped)."""
    by_direction: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        by_direction.setdefault(_direction(it["positive"], it["negatives"][0]), []).append(i)
    keep = set()
    for d, idx in by_direction.items():
        n = min(len(idx), len(by_direction.get(_mirror(d), [])))
        keep.update(idx[j] for j in rng.permutation(len(idx))[:n])
    return [it for i, it in enumerate(items) if i in keep], len(items) - len(keep)


def build_probes(objects_by_image: dict[int, list[dict]], vocabulary: Sequence[str], seed: int = 0,
                 types: Sequence[str] = PROBE_TYPES, colors: Sequence[str] = tuple(COLORS),
                 max_count: int = len(NUMBER_WORDS)) -> tuple[list[dict], dict[str, int]]:
    """Probe items for every image and probe type, and how many images per type gave none (the type could not be
    built, or the item was dropped to balance the text-only signals).

    `vocabulary`: every object name of the dataset (absent objects are drawn from it); `colors`: the colour
    words of the data; `max_count`: the largest number word a probe may use. Items are {image_id, type,
    positive, negatives, chance}.
    """
    unknown = set(types) - set(_BUILDERS)
    if unknown:
        raise ValueError(f"unknown probe types {sorted(unknown)}; choose from {PROBE_TYPES}")
    if not 1 <= max_count <= len(NUMBER_WORDS):
        raise ValueError(f"max_count must be in [1, {len(NUMBER_WORDS)}], got {max_count}")
    items, skipped = [], Counter({t: 0 for t in types})
    for t in types:
        built_items = []
        for image_id in sorted(objects_by_image):
            objects = objects_by_image[image_id]
            rng = np.random.default_rng([seed, int(image_id), PROBE_TYPES.index(t)])
            built = _BUILDERS[t](objects, rng, list(vocabulary), list(colors), max_count) if objects else None
            if built is None:
                skipped[t] += 1
                continue
            positive, negatives = built
            built_items.append({"image_id": int(image_id), "type": t, "positive": positive,
                                "negatives": negatives, "chance": 1.0 / (1 + len(negatives))})
        kept, dropped = _balance(built_items, np.random.default_rng([seed, PROBE_TYPES.index(t)]))
        items += kept
        skipped[t] += dropped
    items.sort(key=lambda it: (it["image_id"], PROBE_TYPES.index(it["type"])))
    return items, dict(skipped)


# ------------------------------------------------------------------------------------------ scores
def probe_accuracy(items: list[dict], positive_scores, negative_scores, tie_credit: float = 0.0) -> dict:
    """Per probe type: accuracy (percent of items whose positive scores strictly above all negatives; a tie
    earns `tie_credit`: 0 for a model, 0.5 for a heuristic that guesses when it cannot decide), chance
    (percent) and number of items; plus the macro mean over types.

    `positive_scores[i]` is item i's positive score, `negative_scores[i]` the list of its negatives' scores.
    """
    if not len(items) == len(positive_scores) == len(negative_scores):
        raise ValueError("need one positive score and one list of negative scores per item")
    per_type: dict[str, dict] = {}
    for item, pos, negs in zip(items, positive_scores, negative_scores):
        stats = per_type.setdefault(item["type"], {"correct": 0.0, "num_items": 0, "chance_sum": 0.0})
        best_negative = max(float(s) for s in negs)
        stats["correct"] += 1.0 if float(pos) > best_negative else tie_credit if float(pos) == best_negative else 0.0
        stats["num_items"] += 1
        stats["chance_sum"] += item["chance"]
    order = [t for t in PROBE_TYPES if t in per_type] + [t for t in per_type if t not in PROBE_TYPES]
    out = {t: {"accuracy": 100.0 * per_type[t]["correct"] / per_type[t]["num_items"],
               "chance": 100.0 * per_type[t]["chance_sum"] / per_type[t]["num_items"],
               "num_items": per_type[t]["num_items"]} for t in order}
    accs = [v["accuracy"] for v in out.values()]
    return {"per_type": out, "mean_accuracy": float(np.mean(accs)) if accs else float("nan")}


# Text-only heuristics (a higher score wins); the opposite heuristic ("longer wins") scores 100 minus these.
TEXT_HEURISTICS = {"shorter_wins": lambda text: -len(text), "smaller_number_wins": lambda text: -stated_number(text)}


def heuristic_accuracy(items: list[dict]) -> dict[str, dict[str, float]]:
    """{heuristic: {probe type: accuracy %}} of each text-only heuristic (ties count half)."""
    out = {}
    for name, score in TEXT_HEURISTICS.items():
        acc = probe_accuracy(items, [score(it["positive"]) for it in items],
                             [[score(t) for t in it["negatives"]] for it in items], tie_credit=0.5)
        out[name] = {t: v["accuracy"] for t, v in acc["per_type"].items()}
    return out

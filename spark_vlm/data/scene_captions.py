"""Captions for the procedural scenes: varied templates and word orders, every statement TRUE about the scene
(counts in words for a colour+shape group, colours, sizes that single an object out, spatial relations with a
clear margin, enumerations, and partial captions), with shape/size synonyms sometimes. Each caption comes with
its kind (CAPTION_KINDS), so evaluations can report per kind; scene_truth.py checks a caption against any scene."""

from spark_vlm.data.scene_vocab import COLORS, PLURALS, SHAPE_SYNONYMS, SIZE_SYNONYMS, SIZES
from spark_vlm.data.text import NUMBER_WORDS, with_article

_BG_WORDS = {"solid": ["plain", "flat"], "gradient": ["gradient", "shaded"],
             "noise": ["textured", "mottled"]}


# What a caption states: every group listed with its count and the total (enumeration), one group's count,
# a relation between two objects, one or two groups (partial), the colours present, the sizes present.
CAPTION_KINDS = ("enumeration", "count", "relation", "partial", "colour", "size")


def _pick(rng, words: list[str], p_other: float) -> str:
    """Canonical word (first) most of the time, otherwise a uniformly chosen synonym."""
    if len(words) > 1 and rng.random() < p_other:
        return words[1 + rng.integers(len(words) - 1)]
    return words[0]


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def make_captions(objects: list[dict], bg_kind: str, config, rng) -> list[tuple[str, str]]:
    """`captions_per_image` (true caption, its kind) pairs of varied kinds; distinct whenever the scene allows."""
    S, p_syn = config.image_size, config.synonym_prob
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(objects):
        groups.setdefault((o["color"], o["shape"]), []).append(i)
    N = len(objects)
    choice = lambda seq: seq[rng.integers(len(seq))]

    def shape_word(shape, plural=False):
        w = _pick(rng, SHAPE_SYNONYMS[shape], p_syn)
        return PLURALS[w] if plural else w

    def size_need(i):
        """None: not uniquely describable; False: size optional; True: size required."""
        o, g = objects[i], groups[(objects[i]["color"], objects[i]["shape"])]
        if len(g) == 1:
            return False
        return True if sum(objects[j]["size"] == o["size"] for j in g) == 1 else None

    def describe(i):                                   # "a small red circle" (unique referent)
        o, need = objects[i], size_need(i)
        size = _pick(rng, SIZE_SYNONYMS[o["size"]], p_syn) + " " if need or rng.random() < 0.35 else ""
        return with_article(f"{size}{o['color']} {shape_word(o['shape'])}")

    def group_phrase(key, numeric=False):              # "two red circles" / "a red circle"
        g = groups[key]
        if len(g) == 1 and not numeric:
            return describe(g[0])
        return f"{NUMBER_WORDS[len(g) - 1]} {key[0]} {shape_word(key[1], plural=len(g) > 1)}"

    def total(noun=None):                              # "three shapes" / "one object"
        noun = noun or choice(["shape", "object"])
        return f"{NUMBER_WORDS[N - 1]} {noun}{'s' if N > 1 else ''}"

    keys = list(groups)

    def enumerate_():
        order = [keys[k] for k in rng.permutation(len(keys))]
        listing = _join([group_phrase(k) for k in order])
        return "enumeration", choice([f"{total()}: {listing}", f"there {'are' if N > 1 else 'is'} {total()}: "
                                      f"{listing}", f"{listing}, {total()} in total"])

    def count():
        multi = [k for k in keys if len(groups[k]) > 1]
        key = choice(multi) if multi and rng.random() < 0.8 else choice(keys)
        phrase, n = group_phrase(key, numeric=True), len(groups[key])
        options = [phrase, f"there {'are' if n > 1 else 'is'} {phrase}", f"an image with {phrase}"]
        if N > n:
            options.append(f"{phrase} among {total('shape')}")
        return "count", choice(options)

    def relation():
        ok = [i for i in range(N) if size_need(i) is not None]
        margin = config.relation_margin * S
        pairs = []
        for a in ok:
            for b in ok:                               # each ordered pair once; mirror it too
                dx, dy = (objects[a]["center"][k] - objects[b]["center"][k] for k in (0, 1))
                if dx <= -margin:
                    pairs += [(a, b, choice(["left of", "to the left of"])),
                              (b, a, choice(["right of", "to the right of"]))]
                if dy <= -margin:
                    pairs += [(a, b, "above"), (b, a, "below")]
        if not pairs:
            return short()
        a, b, rel = choice(pairs)
        template = choice(["{} {} {}", "{} is {} {}", "there is {} {} {}"])
        return "relation", template.format(describe(a), rel, describe(b))

    def short():                                       # names only some of the objects
        k = min(len(keys), 1 + int(rng.random() < 0.5))
        parts = [group_phrase(keys[j]) for j in rng.permutation(len(keys))[:k]]
        phrase = _join(parts)
        bg = choice(_BG_WORDS[bg_kind])
        return "partial", choice([phrase, f"a picture of {phrase}", f"{phrase} on {with_article(bg)} background"])

    def colors():
        cs = [c for c in COLORS if any(o["color"] == c for o in objects)]
        cs = [cs[j] for j in rng.permutation(len(cs))]
        if N == 1:
            return "colour", choice([f"a single {cs[0]} shape", f"one {cs[0]} object"])
        if len(cs) == 1:
            return "colour", choice([f"only {cs[0]} shapes", f"{total()}, all {cs[0]}"])
        return "colour", choice([f"{_join(cs)} shapes", f"shapes in {_join(cs)}", f"{total()} in {_join(cs)}"])

    def sizes():
        parts = []
        for s in SIZES:
            n = sum(o["size"] == s for o in objects)
            if n:
                noun = choice(["shape", "object"]) + ("s" if n > 1 else "")
                parts.append(f"{NUMBER_WORDS[n - 1]} {_pick(rng, SIZE_SYNONYMS[s], p_syn)} {noun}")
        return "size", _join([parts[j] for j in rng.permutation(len(parts))])

    makers = [count, relation, short, colors, sizes]
    plan = [enumerate_] + [makers[j] for j in rng.permutation(len(makers))]
    captions: list[tuple[str, str]] = []
    for attempt in range(8 * config.captions_per_image):
        if len(captions) == config.captions_per_image:
            break
        kind, c = plan[attempt % len(plan)]()
        if all(c != text for text, _ in captions):
            captions.append((c, kind))
    unique = list(captions)
    while len(captions) < config.captions_per_image:   # tiny scenes may not allow 5 distinct ones
        captions.append(unique[len(captions) % len(unique)])
    return [captions[j] for j in rng.permutation(len(captions))]

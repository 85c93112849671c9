"""Vocabulary of the procedural scene dataset: shapes, their synonyms, colours, sizes (number words: text.py).

Everything that generates or scores captions about the synthetic scenes reads its words from
here, so the generator, the COCO export and the hallucination metrics agree on one vocabulary.
"""

# The 8 shape classes, in category-id order (COCO category id = index + 1).
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring")

# Canonical name first. Every word belongs to exactly one class, so a word in a caption maps
# back to a single shape (this is what hallucination scoring relies on).
SHAPE_SYNONYMS: dict[str, list[str]] = {
    "circle": ["circle", "disc", "ball"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "pyramid"],
    "star": ["star", "pentagram"],
    "cross": ["cross", "plus"],
    "diamond": ["diamond", "rhombus"],
    "hexagon": ["hexagon", "hex"],
    "ring": ["ring", "donut", "hoop"],
}

# word -> canonical class, for parsing captions back.
WORD_TO_SHAPE: dict[str, str] = {w: s for s, words in SHAPE_SYNONYMS.items() for w in words}

# Plural of every synonym (irregular ones spelled out, the rest just take an "s").
PLURALS: dict[str, str] = {w: w + "s" for w in WORD_TO_SHAPE}
PLURALS.update({"box": "boxes", "cross": "crosses", "plus": "pluses", "rhombus": "rhombuses",
                "hex": "hexes"})

# Object colours: saturated or extreme RGBs far apart from each other (and from the muted,
# mid-grey backgrounds), so a colour word is always checkable from the pixels.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 235),
    "yellow": (250, 225, 20),
    "purple": (140, 40, 190),
    "orange": (255, 135, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}

SIZES = ("small", "large")
# Size words as they may appear in captions (canonical first).
SIZE_SYNONYMS: dict[str, list[str]] = {"small": ["small", "little"], "large": ["large", "big"]}
WORD_TO_SIZE: dict[str, str] = {w: s for s, words in SIZE_SYNONYMS.items() for w in words}

"""K-Precision: how much of the caption a model retrieves for an image is supported by its references.

SPARC (Bica et al. 2024, "faithfulness") retrieves the top-1 caption for each image from the pool of
all captions, then measures with K-Precision (Adlakha et al. 2023) the fraction of the retrieved
caption's tokens that appear in the image's ground-truth captions (K-P), and the same fraction over the
retrieved caption's nouns and adjectives only (K-Pna). We follow Adlakha et al.'s reference code
(McGill-NLP/instruct-qa, `KPrecision`):

* text normalisation as in SQuAD: lower-case, delete punctuation, delete the articles a/an/the,
  split on whitespace;
* the image's reference captions are joined into one "knowledge" text;
* precision = |multiset(prediction tokens) ∩ multiset(knowledge tokens)| / #prediction tokens, so a word
  said twice is supported twice only if the knowledge has it twice; an empty prediction scores 0.
Per-image values are averaged over images and reported in percent.

Nouns and adjectives — WITHOUT a part-of-speech tagger (none is installed). `word_class` decides with
fixed word lists, in this order, and is only an approximation of what a tagger would say:
1. the built-in scenes' vocabulary is exact: shape words and their plurals, "shape(s)", "object(s)",
   "background", "picture", "image", "total", "left", "right" are nouns (spaCy also tags "left" in
   "to the left of" as a noun); colours, size words, background words and "single" are adjectives;
2. closed-class words (determiners, pronouns, prepositions, conjunctions, auxiliaries, number words,
   digits, a few adverbs) are neither;
3. a verb guess for general English: a short list of caption verbs ("sits", "holding", ...), and any
   word ending in "-ing" or "-ed" (longer than 4 letters) that is not on a list of such nouns/adjectives
   ("building", "ceiling", "red", "bed", ...);
4. every other word counts as a noun or adjective (open-class default). This errs towards counting
   adverbs and base-form verbs not on the list as content words.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

from ..data.scene_vocab import COLORS, PLURALS, SIZE_SYNONYMS, WORD_TO_SHAPE

# 1. Built-in scenes vocabulary (exact).
SCENE_NOUNS = frozenset(WORD_TO_SHAPE) | frozenset(PLURALS.values()) | {
    "shape", "shapes", "object", "objects", "background", "picture", "image", "total", "left", "right"}
SCENE_ADJECTIVES = frozenset(COLORS) | {w for words in SIZE_SYNONYMS.values() for w in words} | {
    "plain", "flat", "gradient", "shaded", "textured", "mottled", "single"}

# 2. Closed-class words: never nouns or adjectives.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every all both either neither no another such
i me my mine you your yours he him his she her hers it its we us our ours they them their theirs
who whom whose which what there here someone something
of in on at to with by from for into onto over under above below near next beside besides behind
between among amongst through across around up down out off along against inside outside atop
toward towards upon within without beneath underneath about after before during than like via
and or but nor so yet while as if then because although though whereas
is are was were be been being am has have had having do does did can could will would shall should
may might must
not very also only just too quite really rather almost together still even ever again
one two three four five six seven eight nine ten eleven twelve dozen
""".split())

# 3. Verb guess: common caption verbs, and "-ing"/"-ed" words, minus nouns/adjectives with those endings.
COMMON_VERBS = frozenset("""
sit sits stand stands hold holds look looks ride rides eat eats play plays lay lays lie lies wait waits
walk walks fly flies sleep sleeps carry carries use uses wear wears show shows contain contains
make makes take takes get gets go goes come comes see sees watch watches cut cuts fill filled
""".split())
ING_ED_CONTENT_WORDS = frozenset("""
building buildings ceiling ceilings clothing painting paintings king thing things something nothing
everything evening morning wedding sling wing wings string strings icing railing railings siding
topping toppings pudding dumpling dumplings bedding sibling ping ring rings spring swing swings
awning awnings frosting stuffing cling bling sporting
red bed beds shed sled seed seeds weed weeds speed steed feed reed bred need
""".split())

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def tokens(text: str) -> list[str]:
    """SQuAD/Adlakha normalisation: lower-case, drop punctuation, drop articles, split on whitespace."""
    text = (text or "").lower().translate(_PUNCTUATION)
    return _ARTICLES.sub(" ", text).split()


def word_class(word: str) -> str:
    """'noun', 'adjective', 'noun_or_adjective' (open-class default), 'verb' or 'function'."""
    if word in SCENE_NOUNS:
        return "noun"
    if word in SCENE_ADJECTIVES:
        return "adjective"
    if word in FUNCTION_WORDS or word.isdigit():
        return "function"
    if word in COMMON_VERBS:
        return "verb"
    if len(word) > 4 and word.endswith(("ing", "ed")) and word not in ING_ED_CONTENT_WORDS:
        return "verb"
    return "noun_or_adjective"


def is_noun_or_adjective(word: str) -> bool:
    return word_class(word) in ("noun", "adjective", "noun_or_adjective")


def _precision(prediction: list[str], knowledge: Counter) -> float:
    if not prediction:
        return 0.0
    common = Counter(prediction) & knowledge
    return sum(common.values()) / len(prediction)


def k_precision(retrieved: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """K-P and K-Pna in percent: `retrieved[i]` is image i's top-1 caption, `references[i]` its captions.

    K-Pna averages over the images whose retrieved caption has at least one noun or adjective
    (`num_images_kpna`); K-P over all images.
    """
    if len(retrieved) != len(references):
        raise ValueError(f"{len(retrieved)} retrieved captions but {len(references)} reference lists")
    kp, kpna = [], []
    for caption, refs in zip(retrieved, references):
        knowledge = Counter(tokens(" ".join(refs)))
        words = tokens(caption)
        kp.append(_precision(words, knowledge))
        content = [w for w in words if is_noun_or_adjective(w)]
        if content:
            kpna.append(_precision(content, knowledge))
    mean = lambda xs: 100.0 * sum(xs) / len(xs) if xs else float("nan")
    return {"K-P": mean(kp), "K-Pna": mean(kpna), "num_images": len(kp), "num_images_kpna": len(kpna)}

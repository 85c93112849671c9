"""CHAIR object-hallucination metrics (Rohrbach et al., "Object Hallucination in Image Captioning",
EMNLP 2018), following the reference implementation LisaAnne/Hallucination ``utils/chair.py``.

A caption is turned into object mentions like this (same steps, same order as the reference):

1. lower-case and split into words (punctuation and the possessive "'s" become their own tokens);
2. singularise every word ("dogs" -> "dog", "people" -> "person");
3. merge two-word names, scanning left to right ("hot dog" is not a dog, "teddy bear" not a
   bear, "baby cat" is a cat and not a person, "bow tie" is a tie, "toilet seat" is a toilet);
4. if both "toilet" and "seat" remain, drop every "seat" ("the seat of the toilet" is no chair);
5. keep the words found in a category's synonym list; each kept word is one mention.

CHAIRs = % of captions with at least one mention of an object absent from the image;
CHAIRi = % of all mentions (repeats count) that name an absent object, pooled over the corpus.
"Absent" means: not among the image's ground-truth objects, which for COCO are the instance
annotations plus every object mentioned in the image's reference captions.

The default deviates from the reference where the reference is wrong (each a bug fix there);
``ChairVocabulary.coco(reference_exact=True)`` (``eval/hallucination.py --reference-exact``) undoes
the first and third, so that the reference's published numbers can be reproduced:
* The reference singularises with ``pattern.en.singularize``; we use the small rule-based
  ``singularize`` below, which is right for every vocabulary word. pattern gets a few wrong and
  the reference inherits it: "bus" -> "bu" (so a singular bus is never counted), "ties" -> "ty",
  "glass" -> "glas" (the reference's "wine glas" rule patches only that one).
* Tokenisation is a regular expression instead of ``nltk.word_tokenize`` (also in the
  reference-exact mode: nltk and its punkt data are not installed); both split off punctuation
  and "'s"/"n't" and keep hyphenated words whole, which is all that matters here.
* Two synonyms in the reference list carry a leading space (" motor bike", " cheesecake") and can
  never match there; we strip them, so "motor bike" counts as a motorcycle and "cheesecake" as
  a cake. The data file itself is kept byte-identical to the reference list.
* With no mention in any caption CHAIRi is 0 (the reference divides by zero), in both modes.
* Kept as in the reference: "iPhone" is never matched (captions are lower-cased, the synonym is
  not) and the three-word "stove top oven" is seen as "stove", "top", "oven" (two oven mentions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

from ..data.coco_json import check_id, coco_entries
from .pattern_singular import pattern_singularize

COCO_SYNONYMS_PATH = Path(__file__).parent / "data" / "coco_synonyms.txt"

# ---------------------------------------------------------------------------------------------
# Singularisation. Small and rule-based; tested on every COCO synonym and its plural.

# Words that end in "s" but are already singular (or have no singular).
_NO_CHANGE = {
    "scissors", "pants", "jeans", "shorts", "trousers", "pliers", "tongs", "binoculars", "clothes",
    "series", "species", "news", "means", "headquarters", "physics", "mathematics", "athletics",
    "gymnastics", "electronics", "aerobics", "christmas", "canvas", "atlas", "alias", "bias", "gas",
    "chaos", "cosmos", "lens", "this", "his", "hers", "its", "was", "has", "as", "yes", "always",
    "perhaps", "towards", "besides", "across", "whereas", "upstairs", "downstairs", "overseas",
    "outdoors", "indoors", "sometimes", "afterwards",
}
# Singular nouns in "-is" (others in "-is" are plurals of "-i" nouns: taxis, skis, kiwis).
_IS_WORDS = {"tennis", "iris", "ibis", "axis", "chassis", "penis", "pelvis", "mantis", "trellis",
             "glottis", "epidermis", "cannabis", "metropolis", "acropolis", "marquis", "dais"}
# Nouns in "-u" (their plural ends in "-us"; every other "-us" word is singular: bus, cactus).
_U_WORDS = {"emu", "gnu", "menu", "tutu", "guru", "zebu", "haiku", "tofu", "bayou", "caribou",
            "tiramisu", "kudzu", "sudoku"}
# Irregular plurals, matched whole.
_IRREGULAR = {"mice": "mouse", "lice": "louse", "geese": "goose", "feet": "foot", "teeth": "tooth",
              "oxen": "ox", "cacti": "cactus", "fungi": "fungus", "busses": "bus", "quizzes": "quiz"}
# Irregular plural endings, matched as suffixes so compounds work ("policemen", "pocketknives").
_IRREGULAR_SUFFIXES = {
    "children": "child", "people": "person", "men": "man", "knives": "knife", "wives": "wife",
    "calves": "calf", "halves": "half", "wolves": "wolf", "shelves": "shelf", "leaves": "leaf",
    "loaves": "loaf", "thieves": "thief", "scarves": "scarf", "hooves": "hoof",
}
# Singular words that end in "men" and must not become "-man".
_MEN_WORDS = {"omen", "specimen", "abdomen", "semen", "amen", "ramen", "stamen", "lumen", "hymen",
              "regimen", "acumen", "albumen", "bitumen", "cyclamen"}
# Words whose singular ends in "-ie" / "-oe" / "-use" / "-che" (the default rules would cut more).
_IE_WORDS = {"tie", "necktie", "pie", "magpie", "doggie", "collie", "cookie", "movie", "zombie",
             "hippie", "selfie", "goalie", "rookie", "beanie", "brownie", "genie", "calorie",
             "prairie", "veggie", "birdie", "hoagie", "smoothie", "auntie", "pixie", "lie", "die"}
_OE_WORDS = {"shoe", "horseshoe", "snowshoe", "canoe", "toe", "tiptoe", "hoe", "oboe", "floe",
             "doe", "foe", "roe", "sloe", "mistletoe"}
_USE_WORDS = {"cause", "excuse", "fuse", "muse", "abuse", "ruse", "use", "accuse", "refuse",
              "amuse", "reuse", "misuse", "recluse"}
_CHE_WORDS = {"headache", "toothache", "stomachache", "moustache", "mustache", "niche", "cache",
              "quiche", "avalanche", "cliche", "creche"}


def _is_singular_s(w: str) -> bool:
    """True for words that end in "s" without being plurals: "grass", "bus", "tennis", "lens"."""
    return w.endswith("s") and (
        w in _NO_CHANGE or w.endswith("ss")
        or (w.endswith("us") and w[:-1] not in _U_WORDS)
        or (w.endswith("is") and (w in _IS_WORDS or w.endswith(("sis", "itis")))))


def singularize(word: str) -> str:
    """Singular of a lower-case English noun; other words come back unchanged or harmlessly cut."""
    w = word
    if len(w) <= 2 or not w.isalpha():
        return w
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    for plural, singular in _IRREGULAR_SUFFIXES.items():
        if w.endswith(plural) and w not in _MEN_WORDS:
            return w[: len(w) - len(plural)] + singular
    if not w.endswith("s") or _is_singular_s(w):
        return w
    if w.endswith("ies"):
        stem = w[:-3]
        return stem + "ie" if stem + "ie" in _IE_WORDS else stem + "y"  # ties, puppies
    if w.endswith("oes"):
        return w[:-1] if w[:-1] in _OE_WORDS else w[:-2]  # canoes, buffaloes
    if w.endswith("ses"):
        if w.endswith("ouses") or w[:-1] in _USE_WORDS:
            return w[:-1]  # houses, causes
        if _is_singular_s(w[:-2]):
            return w[:-2]  # glasses, buses, pluses, lenses
        return w[:-1]  # horses, vases
    if w.endswith("ches"):
        return w[:-1] if w[:-1] in _CHE_WORDS else w[:-2]  # benches, but headaches
    if w.endswith(("shes", "xes", "zzes")):
        return w[:-2]  # brushes, boxes, buzzes
    return w[:-1]  # dogs, bikes, stoves, skis, taxis


# ---------------------------------------------------------------------------------------------
# Tokenisation: "n't" and "'s"-style clitics split off like NLTK's word_tokenize, words may
# contain inner hyphens/periods ("t-shirt", "a.m"), any other non-space character is a token.
_TOKEN_RE = re.compile(r"\w+(?=n't\b)|n't\b|\w+(?:[-.]\w+)*|'\w*|[^\w\s]")


def tokenize(caption: str) -> list[str]:
    return _TOKEN_RE.findall(caption.lower())


# ---------------------------------------------------------------------------------------------
# The reference's hard-coded COCO rules (utils/chair.py, CHAIR.__init__).
COCO_DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
    "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
    "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
    "stove top oven", "home plate", "train track",
)
# "baby bird" / "adult bird" is a bird, not a (human) baby or adult.
COCO_ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
                     "giraffe", "animal", "cub")
# "passenger jet" is a jet, not a passenger.
COCO_VEHICLE_WORDS = ("jet", "train")


@dataclass(frozen=True)
class ChairVocabulary:
    """What CHAIR counts as an object mention.

    synonyms: category -> its words (category name first), as in the reference synonyms list.
    double_words: two-word phrase (after singularisation) -> the word it stands for.
    drop_rules: (trigger, word) pairs: when ``trigger`` is in a caption, every ``word`` is dropped.
    singularizer: applied to every caption token (``pattern_singularize`` in the reference-exact mode).
    """

    synonyms: dict[str, list[str]]
    double_words: dict[str, str] = field(default_factory=dict)
    drop_rules: tuple[tuple[str, str], ...] = ()
    singularizer: Callable[[str], str] = singularize
    word_to_category: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lookup: dict[str, str] = {}
        for category, words in self.synonyms.items():
            for w in words:
                lookup[w] = category  # a later line wins, as with the reference's dict
        object.__setattr__(self, "word_to_category", lookup)

    @property
    def categories(self) -> list[str]:
        return list(self.synonyms)

    def category_of(self, name: str) -> str | None:
        """Category for a category name or synonym (e.g. an instance-annotation class name)."""
        name = name.strip().lower()
        return self.word_to_category.get(name) or self.word_to_category.get(
            " ".join(self.singularizer(w) for w in name.split()))

    @classmethod
    def coco(cls, path: str | Path = COCO_SYNONYMS_PATH, reference_exact: bool = False) -> "ChairVocabulary":
        """The 80 COCO categories with the reference's synonyms and two-word rules.

        The file has one category per line, ``name, synonym, synonym, ...``, exactly like the
        reference's data/synonyms.txt. Each entry is stripped: the reference splits on ", " and
        keeps the leading space of " motor bike" and " cheesecake", which then never match.
        ``reference_exact`` keeps those spaces and singularises with pattern.en's rules, as the
        reference does.
        """
        synonyms: dict[str, list[str]] = {}
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if reference_exact:
                words = line.strip().split(", ")
            else:
                words = [w.strip() for w in line.strip().split(", ") if w.strip()]
            if words and words[0]:
                synonyms[words[0]] = words
        double_words = {d: d for d in COCO_DOUBLE_WORDS}
        for animal in COCO_ANIMAL_WORDS:
            double_words[f"baby {animal}"] = animal
            double_words[f"adult {animal}"] = animal
        for vehicle in COCO_VEHICLE_WORDS:
            double_words[f"passenger {vehicle}"] = vehicle
        double_words["bow tie"] = "tie"
        double_words["toilet seat"] = "toilet"
        double_words["wine glas"] = "wine glass"  # kept from the reference; pattern's "glas"
        return cls(synonyms, double_words, drop_rules=(("toilet", "seat"),),
                   singularizer=pattern_singularize if reference_exact else singularize)

    @classmethod
    def from_synonyms(cls, synonyms: Mapping[str, Sequence[str]]) -> "ChairVocabulary":
        """A custom vocabulary, e.g. the synthetic scenes' ``{"square": ["square", "box"], ...}``.

        Synonyms are lower-cased and also stored singularised (so "glasses" matches captions,
        which are singularised too); the category name itself always counts as a synonym.
        Two-word synonyms become two-word phrases; longer ones cannot be matched and raise.
        The COCO-only rules (baby/adult/passenger qualifiers, toilet seat) are not added.
        """
        table: dict[str, list[str]] = {}
        double_words: dict[str, str] = {}
        for category, words in synonyms.items():
            if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
                raise ValueError(f"synonyms of {category!r} must be a list of words, got {words!r}")
            entries: list[str] = []
            for raw in [category, *words]:
                phrase = " ".join(str(raw).lower().split())
                singular = " ".join(singularize(w) for w in phrase.split())
                if len(phrase.split()) > 2:
                    raise ValueError(f"synonym {raw!r} of {category!r} has more than two words; "
                                     "CHAIR only matches one- and two-word names")
                for form in (phrase, singular):
                    if form and form not in entries:
                        entries.append(form)
                    if len(form.split()) == 2:
                        double_words[form] = form
            table[str(category)] = entries
        return cls(table, double_words)


def extract_objects(caption: str, vocab: ChairVocabulary) -> list[tuple[str, str]]:
    """``[(word, category), ...]`` for every object mention in ``caption``, in order, repeats kept.

    ``word`` is the matched (singularised, two-word-merged) synonym, e.g. ("kitten", "cat").
    """
    words = [vocab.singularizer(w) for w in tokenize(caption)]
    merged: list[str] = []
    i = 0
    while i < len(words):  # greedy left-to-right pairs, as in the reference
        pair = " ".join(words[i:i + 2])
        if i + 1 < len(words) and pair in vocab.double_words:
            merged.append(vocab.double_words[pair])
            i += 2
        else:
            merged.append(words[i])
            i += 1
    for trigger, dropped in vocab.drop_rules:
        if trigger in merged and dropped in merged:
            merged = [w for w in merged if w != dropped]
    return [(w, vocab.word_to_category[w]) for w in merged if w in vocab.word_to_category]


def _count_words(caption: str) -> int:
    return sum(1 for w in caption.split() if any(ch.isalnum() for ch in w))


def compute_chair(results: Sequence[Mapping[str, Any]],
                  gt_objects: Mapping[Hashable, set[str]],
                  vocab: ChairVocabulary) -> dict:
    """CHAIRs and CHAIRi (in %, like the paper's tables) plus per-caption records.

    Args:
        results: ``[{"image_id": ..., "caption": "..."}]``; several captions per image are fine.
        gt_objects: ``{image_id: {category, ...}}`` of objects present (see gt_objects_from_coco).
        vocab: the object vocabulary (``ChairVocabulary.coco()`` for COCO).

    Returns ``CHAIRs``, ``CHAIRi``, counts, ``mean_caption_length`` (whitespace-separated words
    with a letter or digit), ``mean_objects_per_caption`` (mentions, repeats counted) and
    ``per_caption``: image_id, caption, mentioned and hallucinated ``[word, category]`` pairs.
    With no mentions at all CHAIRi is 0 (the reference would divide by zero).
    """
    if isinstance(results, (str, Mapping)) or not isinstance(results, Sequence):
        raise ValueError("results must be a list of {'image_id', 'caption'} dicts")
    if not results:
        raise ValueError("no captions to score: the results list is empty")
    n_hallucinated_captions = n_mentions = n_hallucinated = n_words = 0
    per_caption = []
    for i, entry in enumerate(results):
        if not isinstance(entry, Mapping) or "image_id" not in entry or not isinstance(entry.get("caption"), str):
            raise ValueError(f"result #{i} must be a dict with 'image_id' and a string 'caption'")
        image_id, caption = check_id(entry["image_id"], f"result #{i}'s image_id"), entry["caption"]
        if image_id not in gt_objects:
            raise ValueError(f"result #{i} has image_id {image_id!r}, which has no ground-truth objects entry")
        present = gt_objects[image_id]
        mentioned = extract_objects(caption, vocab)
        hallucinated = [(w, c) for w, c in mentioned if c not in present]
        n_mentions += len(mentioned)
        n_hallucinated += len(hallucinated)
        n_hallucinated_captions += bool(hallucinated)
        words = _count_words(caption)
        n_words += words
        per_caption.append({
            "image_id": image_id, "caption": caption,
            "mentioned": [list(m) for m in mentioned],
            "hallucinated": [list(h) for h in hallucinated],
            "gt_objects": sorted(present), "num_words": words,
        })
    n = len(results)
    return {
        "CHAIRs": 100.0 * n_hallucinated_captions / n,
        "CHAIRi": 100.0 * n_hallucinated / n_mentions if n_mentions else 0.0,
        "num_captions": n,
        "num_hallucinated_captions": n_hallucinated_captions,
        "num_mentions": n_mentions,
        "num_hallucinated_mentions": n_hallucinated,
        "mean_caption_length": n_words / n,
        "mean_objects_per_caption": n_mentions / n,
        "per_caption": per_caption,
    }


def gt_objects_from_coco(instances_json: Mapping[str, Any] | None,
                         captions_json: Mapping[str, Any],
                         vocab: ChairVocabulary,
                         instances_name: str = "instances", captions_name: str = "captions") -> dict[Hashable, set[str]]:
    """Ground-truth objects per image: instance annotations ∪ objects in the reference captions.

    ``instances_json`` (COCO instances format, optional) contributes each annotation's category,
    mapped through ``vocab``; ``captions_json`` (COCO captions format) contributes every object
    mentioned in an image's reference captions. Every image listed in either file gets an entry.
    A malformed entry raises ValueError naming the file (``*_name``), the entry and what is wrong.
    """
    captions = coco_entries(captions_json, "annotations", captions_name, ids=("image_id",), strings=("caption",))
    objects: dict[Hashable, set[str]] = {}
    for name, source in ((instances_name, instances_json), (captions_name, captions_json)):
        if source is not None and not isinstance(source, Mapping):  # e.g. a file holding just `0`
            raise ValueError(f"{name} must be a COCO JSON object, not {type(source).__name__}")
        if source is not None and "images" in source:
            for image in coco_entries(source, "images", name, ids=("id",)):
                objects.setdefault(image["id"], set())

    if instances_json is not None:
        id_to_category = {}
        for cat in coco_entries(instances_json, "categories", instances_name, ids=("id",), strings=("name",)):
            category = vocab.category_of(cat["name"])
            if category is None:
                raise ValueError(f"{instances_name}: category {cat['name']!r} is not in the CHAIR vocabulary")
            id_to_category[cat["id"]] = category
        for i, ann in enumerate(coco_entries(instances_json, "annotations", instances_name,
                                             ids=("image_id", "category_id"))):
            if ann["category_id"] not in id_to_category:
                raise ValueError(f"{instances_name}: annotations[{i}] refers to unknown category_id "
                                 f"{ann['category_id']!r}")
            objects.setdefault(ann["image_id"], set()).add(id_to_category[ann["category_id"]])

    for ann in captions:
        found = objects.setdefault(ann["image_id"], set())
        found.update(category for _, category in extract_objects(ann["caption"], vocab))
    return objects

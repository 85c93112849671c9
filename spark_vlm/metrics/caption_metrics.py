"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) computed exactly as COCOEvalCap does.

The numbers come straight from pycocoevalcap's scorers: both the generated and the reference
captions go through its Stanford PTBTokenizer first (lower-casing, punctuation removed), then
each scorer sees the same ``{image_id: [tokenized caption, ...]}`` dicts COCOEvalCap builds.
Only the bookkeeping around it is ours: input validation, the choice of scorers, and reporting
every score multiplied by 100 (the convention of captioning papers).

Things to know when reading the numbers:
* CIDEr is pycocoevalcap's ``Cider``, i.e. CIDEr-D (clipped n-gram counts, Gaussian length
  penalty with sigma=6). Its IDF weights come from the references of the images being scored,
  so a score depends on the whole evaluated set: scores of two subsets do not average to the
  score of their union.
* BLEU is corpus-level BLEU ("closest" reference length), as COCOEvalCap reports it; the per
  image BLEU values are sentence-level and do not average to the corpus value.
* METEOR and the PTB tokenizer run Java (pycocoevalcap ships the jars); METEOR's start-up
  takes a few seconds because it loads its paraphrase table.

Keys follow COCOEvalCap (``Bleu_1`` .. ``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``) so the
output can be compared with, or fed to, tools that read COCOEvalCap results.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Mapping, Sequence

from ..data.coco_json import check_id

# Scorer name -> the keys it reports, in COCOEvalCap's order.
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "Bleu": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"),
    "METEOR": ("METEOR",),
    "ROUGE_L": ("ROUGE_L",),
    "CIDEr": ("CIDEr",),
}
ALL_SCORERS = tuple(METRIC_KEYS)

SPICE_UNAVAILABLE = (
    "SPICE is not available here: pycocoevalcap's SPICE scorer downloads Stanford CoreNLP "
    "(stanford-corenlp-3.6.0, several hundred MB) from nlp.stanford.edu the first time it is "
    "constructed, which is impossible on this offline machine. Score without SPICE, or run "
    "pycocoevalcap.spice.spice.Spice yourself on a machine that can download CoreNLP once."
)


def validate_results(results: Sequence[Mapping[str, Any]],
                     references: Mapping[Hashable, Sequence[str]]) -> None:
    """Raise ValueError on anything COCOEvalCap would silently mis-score.

    Checks, in order: each result is a dict with ``image_id`` and a non-empty string ``caption``;
    no image id appears twice; every image id has at least one reference caption.
    """
    if isinstance(results, (str, Mapping)) or not isinstance(results, Sequence):
        raise ValueError("results must be a list of {'image_id', 'caption'} dicts")
    if not results:
        raise ValueError("no results to score: the results list is empty")
    seen: set = set()
    for i, entry in enumerate(results):
        if not isinstance(entry, Mapping) or "image_id" not in entry or "caption" not in entry:
            raise ValueError(f"result #{i} must be a dict with 'image_id' and 'caption', got {entry!r}")
        image_id, caption = check_id(entry["image_id"], f"result #{i}'s image_id"), entry["caption"]
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"result #{i} (image_id={image_id!r}) has an empty caption: {caption!r}")
        if image_id in seen:
            raise ValueError(f"image_id {image_id!r} appears more than once in the results "
                             f"(first repeat at result #{i}); COCO scoring takes one caption per image")
        seen.add(image_id)
        if image_id not in references:
            raise ValueError(f"result #{i} has image_id {image_id!r}, which has no reference captions")
        refs = references[image_id]
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references for image_id {image_id!r} must be a non-empty list of strings")


def _tokenize(results: Sequence[Mapping[str, Any]],
              references: Mapping[Hashable, Sequence[str]]) -> tuple[dict, dict]:
    """PTB-tokenize references and results separately, exactly as COCOEvalCap.evaluate() does."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The Java tokenizer is fed one caption per line and its output lines are zipped back to
    # image ids, so a stray line break (\r, \u2028, ...) inside a caption would silently shift
    # every later caption. Collapsing whitespace changes no token and rules that out.
    def one_line(text: str) -> str:
        return " ".join(text.split())

    image_ids = [r["image_id"] for r in results]
    gts = {i: [{"caption": one_line(c)} for c in references[i]] for i in image_ids}
    res = {r["image_id"]: [{"caption": one_line(r["caption"])}] for r in results}
    tokenizer = PTBTokenizer()
    return tokenizer.tokenize(gts), tokenizer.tokenize(res)


def _make_scorer(name: str):
    # Imported lazily: importing this module should not start Java or need pycocoevalcap.
    if name == "Bleu":
        from pycocoevalcap.bleu.bleu import Bleu
        return Bleu(4)
    if name == "METEOR":
        from pycocoevalcap.meteor.meteor import Meteor
        return Meteor()  # starts the METEOR jar as a subprocess
    if name == "ROUGE_L":
        from pycocoevalcap.rouge.rouge import Rouge
        return Rouge()
    if name == "CIDEr":
        from pycocoevalcap.cider.cider import Cider
        return Cider()
    raise ValueError(f"unknown scorer {name!r}; choose from {list(ALL_SCORERS)}")


def _run_scorer(name: str, scorer, gts: dict, res: dict) -> tuple[list[float], list[list[float]]]:
    """Run one scorer; return (overall per key, per-image values per key), both unscaled."""
    if name == "Bleu":
        overall, per_image = scorer.compute_score(gts, res, verbose=0)  # verbose=0: no stdout spam
        return list(overall), [list(v) for v in per_image]
    overall, per_image = scorer.compute_score(gts, res)
    return [float(overall)], [[float(v) for v in per_image]]


def score_captions(results: Sequence[Mapping[str, Any]],
                   references: Mapping[Hashable, Sequence[str]],
                   spice: bool = False,
                   scorers: Iterable[str] = ALL_SCORERS) -> dict:
    """Score generated captions against reference captions, COCOEvalCap style.

    Args:
        results: ``[{"image_id": ..., "caption": "..."}]``, one caption per image (the COCO
            results-file format). Only these images are scored, as with
            ``cocoEval.params['image_id'] = cocoRes.getImgIds()``.
        references: ``{image_id: ["ref caption", ...]}``; may hold more images than ``results``.
        spice: SPICE needs a one-time download of Stanford CoreNLP, so ``True`` raises.
        scorers: subset of ``("Bleu", "METEOR", "ROUGE_L", "CIDEr")`` to run (e.g. only CIDEr,
            which skips METEOR's slow Java start-up).

    Returns:
        ``{"overall": {key: score*100}, "per_image": [{"image_id": ..., key: score*100}],
        "num_images": n}`` with keys ``Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr`` (those run).
    """
    if spice:
        raise RuntimeError(SPICE_UNAVAILABLE)
    scorers = list(scorers)
    for name in scorers:
        if name not in METRIC_KEYS:
            raise ValueError(f"unknown scorer {name!r}; choose from {list(ALL_SCORERS)}")
    validate_results(results, references)

    gts, res = _tokenize(results, references)
    image_ids = list(gts.keys())  # every scorer returns per-image values in this order
    overall: dict[str, float] = {}
    per_image: dict[Hashable, dict[str, Any]] = {i: {"image_id": i} for i in image_ids}
    for name in scorers:
        scorer = _make_scorer(name)
        try:
            totals, per_image_values = _run_scorer(name, scorer, gts, res)
        finally:
            del scorer  # Meteor's __del__ shuts its Java process down
        for key, total, values in zip(METRIC_KEYS[name], totals, per_image_values):
            overall[key] = 100.0 * float(total)
            for image_id, value in zip(image_ids, values):
                per_image[image_id][key] = 100.0 * float(value)
    return {"overall": overall, "per_image": list(per_image.values()), "num_images": len(image_ids)}


def references_from_coco(captions_json: Mapping[str, Any]) -> dict[Hashable, list[str]]:
    """``{image_id: [captions]}`` from a COCO-format captions dict (``annotations`` list)."""
    annotations = captions_json.get("annotations") if isinstance(captions_json, Mapping) else None
    if not isinstance(annotations, list):
        raise ValueError("a COCO captions file must be a JSON object with an 'annotations' list")
    references: dict[Hashable, list[str]] = {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, Mapping) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise ValueError(f"caption annotation #{i} must have 'image_id' and a string 'caption'")
        references.setdefault(check_id(ann["image_id"], f"caption annotation #{i}'s image_id"), []).append(ann["caption"])
    return references


def blind_captions(references: Mapping[Hashable, Sequence[str]], image_ids: Iterable[Hashable],
                   seed: int = 0) -> list[dict]:
    """The chance level of a caption score: each image "captioned" with a reference caption of another image,
    drawn by `seed`. It is fluent, on-distribution text that never looked at the image, so a captioner's score is
    only worth the gap above this one."""
    import random

    rng = random.Random(seed)
    pool = sorted(references, key=str)
    if len(pool) < 2:
        raise ValueError("a blind baseline needs reference captions of at least 2 images")
    out = []
    for image_id in sorted(image_ids, key=str):
        other = image_id
        while other == image_id:
            other = rng.choice(pool)
        out.append({"image_id": image_id, "caption": rng.choice(list(references[other]))})
    return out

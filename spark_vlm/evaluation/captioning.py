"""Scores of generated captions (a COCO results file `[{"image_id", "caption"}]`): the COCO caption metrics
against reference captions, and CHAIR object hallucination against the objects each image holds."""
from __future__ import annotations

import shutil

from ..metrics.caption_metrics import references_from_coco, score_captions, validate_results
from ..metrics.chair import ChairVocabulary, compute_chair, gt_objects_from_coco
from .report import Report, read_json


def _naming(path, what: str, fn, *args):
    """fn(*args), its ValueError prefixed with the file it is about."""
    try:
        return fn(*args)
    except ValueError as e:
        raise ValueError(f"{what} file {path}: {e}") from e


def caption_metrics_report(results: str, annotations: str, split: str | None = None) -> Report:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (x100, pycocoevalcap) of `results` against a COCO captions file."""
    references = _naming(annotations, "annotations", references_from_coco, read_json(annotations, "annotations"))
    predictions = read_json(results, "results")
    _naming(results, "results", validate_results, predictions, references)  # before Java starts
    if shutil.which("java") is None:
        raise ValueError("java is not on PATH: pycocoevalcap's PTB tokenizer and METEOR need a Java runtime")
    scores = score_captions(predictions, references)
    result = {"split": split, "num_images": scores["num_images"], "overall": scores["overall"],
              "per_image": scores["per_image"]}
    return Report(f"{split or 'captions'}: {scores['num_images']} images", result, [scores["overall"]])


def chair_report(results: str, captions: str, instances: str | None = None, synonyms: str | None = None,
                 reference_exact: bool = False) -> Report:
    """CHAIRs / CHAIRi (%). Ground-truth objects per image: the instance annotations (if given) plus every object
    named in the image's reference captions. Vocabulary: COCO's 80 categories with the reference CHAIR synonyms,
    unless `synonyms` names a JSON `{category: [synonyms]}` (e.g. the synthetic scenes' synonyms.json).
    `reference_exact`: the reference implementation's singulariser and synonym parsing (COCO only)."""
    if reference_exact and synonyms:
        raise ValueError("--reference-exact reproduces the reference's COCO vocabulary; it cannot be combined "
                         "with --synonyms")
    predictions = read_json(results, "results")
    references = read_json(captions, "captions")
    instance_annotations = read_json(instances, "instances") if instances else None
    if synonyms:
        table = read_json(synonyms, "synonyms")
        if not isinstance(table, dict):
            raise ValueError(f"synonyms file {synonyms} must hold a JSON object {{category: [synonyms]}}")
        vocab = _naming(synonyms, "synonyms", ChairVocabulary.from_synonyms, table)
    else:
        vocab = ChairVocabulary.coco(reference_exact=reference_exact)
    gt_objects = gt_objects_from_coco(instance_annotations, references, vocab, f"instances file {instances}",
                                      f"captions file {captions}")
    scores = _naming(results, "results", compute_chair, predictions, gt_objects, vocab)
    scores["vocabulary"] = synonyms or "coco"
    scores["mode"] = "reference-exact" if reference_exact else "default (fixed singulariser)"
    row = {"CHAIRs": scores["CHAIRs"], "CHAIRi": scores["CHAIRi"], "captions": scores["num_captions"],
           "mentions": scores["num_mentions"], "mean length": scores["mean_caption_length"],
           "objects/caption": scores["mean_objects_per_caption"], "mode": scores["mode"]}
    return Report("CHAIR object hallucination", scores, [row])

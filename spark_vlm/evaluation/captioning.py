"""Scores of generated captions (a COCO results file `[{"image_id", "caption"}]`): the COCO caption metrics
against reference captions, and CHAIR object hallucination against the objects each image holds."""
from __future__ import annotations

from ..metrics.caption_metrics import references_from_coco, score_captions
from ..metrics.chair import ChairVocabulary, compute_chair, gt_objects_from_coco
from .report import Report, read_json


def caption_metrics_report(results: str, annotations: str, split: str | None = None) -> Report:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (x100, pycocoevalcap) of `results` against a COCO captions file."""
    scores = score_captions(read_json(results, "results"), references_from_coco(read_json(annotations, "annotations")))
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
        vocab = ChairVocabulary.from_synonyms(table)
    else:
        vocab = ChairVocabulary.coco(reference_exact=reference_exact)
    scores = compute_chair(predictions, gt_objects_from_coco(instance_annotations, references, vocab), vocab)
    scores["vocabulary"] = synonyms or "coco"
    scores["mode"] = "reference-exact" if reference_exact else "default (fixed singulariser)"
    row = {"CHAIRs": scores["CHAIRs"], "CHAIRi": scores["CHAIRi"], "captions": scores["num_captions"],
           "mentions": scores["num_mentions"], "mean length": scores["mean_caption_length"],
           "objects/caption": scores["mean_objects_per_caption"], "mode": scores["mode"]}
    return Report("CHAIR object hallucination", scores, [row])

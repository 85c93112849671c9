"""Scores of generated captions (a COCO results file `[{"image_id", "caption"}]`): the COCO caption metrics
against reference captions, and CHAIR object hallucination against the objects each image holds."""
from __future__ import annotations

import shutil

from ..metrics.caption_metrics import blind_captions, references_from_coco, score_captions, validate_results
from ..metrics.chair import ChairVocabulary, compute_chair, gt_objects_from_coco
from .report import Report, read_json


def _naming(path, what: str, fn, *args):
    """fn(*args), its ValueError prefixed with the file it is about."""
    try:
        return fn(*args)
    except ValueError as e:
        raise ValueError(f"{what} file {path}: {e}") from e


def caption_metrics_report(results: str, annotations: str, split: str | None = None,
                           blind_seed: int | None = None) -> Report:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (x100, pycocoevalcap) of `results` against a COCO captions file; with
    `blind_seed`, beside the same scores of the blind baseline (`blind_captions`) on the same images."""
    references = _naming(annotations, "annotations", references_from_coco, read_json(annotations, "annotations"))
    predictions = read_json(results, "results")
    _naming(results, "results", validate_results, predictions, references)  # before Java starts
    if shutil.which("java") is None:
        raise ValueError("java is not on PATH: pycocoevalcap's PTB tokenizer and METEOR need a Java runtime")
    scores = score_captions(predictions, references)
    result = {"split": split, "num_images": scores["num_images"], "overall": scores["overall"],
              "per_image": scores["per_image"]}
    rows = [{"captions": "model", **scores["overall"]}]
    if blind_seed is not None:
        blind = score_captions(blind_captions(references, [p["image_id"] for p in predictions], blind_seed), references)
        result["blind_baseline"] = {"seed": blind_seed, "overall": blind["overall"],
                                    "what": "each image captioned with a reference caption of another image"}
        rows.append({"captions": f"blind baseline (another image's reference, seed {blind_seed})", **blind["overall"]})
    return Report(f"{split or 'captions'}: {scores['num_images']} images", result, rows)


def chair_report(results: str, captions: str, instances: str | None = None, synonyms: str | None = None,
                 reference_exact: bool = False, blind_seed: int | None = None) -> Report:
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
    rows = [_chair_row("model", scores)]
    if blind_seed is not None:
        caption_refs = _naming(captions, "captions", references_from_coco, references)
        blind = compute_chair(blind_captions(caption_refs, [p["image_id"] for p in predictions], blind_seed),
                              gt_objects, vocab)
        scores["blind_baseline"] = {k: blind[k] for k in ("CHAIRs", "CHAIRi", "num_captions", "num_mentions",
                                                          "mean_caption_length", "mean_objects_per_caption")}
        scores["blind_baseline"].update(seed=blind_seed, what="each image captioned with a reference caption of "
                                                               "another image")
        rows.append(_chair_row(f"blind baseline (seed {blind_seed})", blind))
    return Report("CHAIR object hallucination", scores, rows)


def _chair_row(name: str, scores: dict) -> dict:
    # CHAIRs grows with the objects a caption names, so the objects per caption stand beside it.
    return {"captions": name, "CHAIRs": scores["CHAIRs"], "CHAIRi": scores["CHAIRi"],
            "mentions": scores["num_mentions"], "mean length": scores["mean_caption_length"],
            "objects/caption": scores["mean_objects_per_caption"]}

"""Retrieval protocols of a stage-1 run on captioned images: zero-shot retrieval R@1/5/10 both ways, and
K-Precision (the faithfulness of the top-1 retrieved caption, as in SPARC). Both start from the same
similarity of every image with every caption of the set. On the built-in scenes retrieval is also reported per
caption kind and truth-aware (a hit on any image the caption is true of), each beside its perfect-model ceiling."""
from __future__ import annotations

import numpy as np

from ..metrics.kprecision import k_precision
from ..metrics.retrieval import retrieval_recall, two_way
from ..data.scene_truth import truth_matrix
from ..data.scenes import SceneConfig
from ..metrics.retrieval_dedup import dedup_retrieval_recall
from ..metrics.retrieval_truth import truth_aware_recall
from .data import CaptionData, load_caption_data
from .report import Report
from .stage1_run import filip_retrieval_similarity, image_embeddings, load_stage1_run, run_objective, text_embeddings


def caption_similarity(checkpoint, source: CaptionData, batch_size: int):
    """Load the run and the data, encode every image and caption. Returns (data description, captions per
    image, flat caption list, (image -> text, text -> image) similarities, each [images, captions], the scenes'
    ground truth or None). Both are the global embeddings' cosine (one tensor), except for a FILIP run, which
    ranks as FILIP does: by its two late-interaction similarities (its loss never trains the global embeddings)."""
    model, tokenizer = load_stage1_run(checkpoint)
    images, captions, _, data, scenes = load_caption_data(source, model.config.image_size)
    texts = [c for caps in captions for c in caps]
    if run_objective(checkpoint) == "filip":
        return data, captions, texts, filip_retrieval_similarity(model, tokenizer, images, texts, batch_size), scenes
    similarity = image_embeddings(model, images, batch_size) @ text_embeddings(model, tokenizer, texts).t()
    return data, captions, texts, (similarity, similarity), scenes


def scene_retrieval(similarity, scenes: list[dict]) -> dict:
    """Per caption kind and overall: standard and truth-aware text->image R@1 with their ceilings and chance."""
    kinds = [k for s in scenes for k in s["caption_kinds"]]
    texts = [c for s in scenes for c in s["captions"]]
    size = scenes[0]["image"].shape[0]
    truth = truth_matrix(texts, kinds, scenes, SceneConfig.relation_margin * size)
    own = np.repeat(np.arange(len(scenes)), [len(s["captions"]) for s in scenes])
    return truth_aware_recall(similarity, truth, own, kinds)


def retrieval_report(checkpoint, source: CaptionData, batch_size: int = 64) -> Report:
    """The standard protocol (an image's own captions are its positives) and a duplicate-aware variant (any
    caption with the same string counts), which matters for template captions such as the built-in scenes'."""
    data, captions, texts, (i2t, t2i), scenes = caption_similarity(checkpoint, source, batch_size)
    text_to_image = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
    standard = two_way(retrieval_recall, i2t, t2i, text_to_image)
    dedup = two_way(lambda sim, tti: dedup_retrieval_recall(sim, texts, tti), i2t, t2i, text_to_image)

    result = {"checkpoint": checkpoint, **data, "num_images": len(captions), "num_texts": len(texts),
              "similarity": "global embeddings (cosine)" if i2t is t2i else "late interaction (FILIP)",
              **standard, "dedup": dedup}
    rows = [{"protocol": name, **{f"{d} R@{k}": r[f"{key}_R@{k}"] for d, key in
                                  (("i→t", "image_to_text"), ("t→i", "text_to_image")) for k in (1, 5, 10)}}
            for name, r in (("standard", standard), ("duplicate-aware", dedup))]
    if scenes:  # per caption kind, each number beside its ceiling (what a perfect model reaches) and chance
        result["by_kind"] = scene_retrieval(t2i, scenes)
        if i2t is not t2i:  # its image -> text number from the image -> text similarity
            result["by_kind"]["all"]["i2t_truth_R@1"] = scene_retrieval(i2t, scenes)["all"]["i2t_truth_R@1"]
        truth_columns = lambda r: {"t→i R@1 ceiling": r["R@1_ceiling"], "truth-aware t→i R@1": r["truth_R@1"],
                                   "its ceiling": r["truth_R@1_ceiling"], "its chance": r["truth_R@1_chance"]}
        rows[0].update(truth_columns(result["by_kind"]["all"]))
        rows += [{"protocol": f"standard, {kind} captions ({r['num_texts']})", "t→i R@1": r["R@1"],
                  **truth_columns(r)} for kind, r in result["by_kind"].items() if kind != "all"]
    return Report("Zero-shot retrieval", result, rows)


def kprecision_report(checkpoint, source: CaptionData, batch_size: int = 64) -> Report:
    """For each image the best caption among all captions of the set is retrieved by global similarity; K-P is
    the share of its words found in the image's reference captions, K-Pna the same over nouns and adjectives."""
    data, captions, texts, (similarity, _), _ = caption_similarity(checkpoint, source, batch_size)  # image -> text
    top1 = similarity.argmax(dim=1).tolist()  # ties -> the first caption: deterministic
    retrieved = [texts[j] for j in top1]
    scores = k_precision(retrieved, captions)

    result = {"checkpoint": checkpoint, **data, "num_texts": len(texts), **scores,
              "examples": [{"retrieved": r, "references": c} for r, c in zip(retrieved[:5], captions[:5])]}
    return Report("K-Precision of the top-1 retrieved caption", result)


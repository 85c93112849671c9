"""Every held-out score of one stage-2 run (a real backbone or `vision_checkpoint=oracle`) on the built-in test
scenes: greedy captions of the first N test scenes -> the COCO caption metrics (BLEU-4, ROUGE-L, CIDEr-D; not
METEOR) and CHAIRs / CHAIRi, each beside the blind baseline (each image given another image's reference caption); POPE
accuracy per setting (random / popular / adversarial; zero- and few-shot); and the run's own final controls from
eval_results.json (val caption loss with own / another / blank image, text-only, image and object-word
contribution, distinct captions). The oracle reads the scenes' ground-truth object tokens instead of pixels, which
is why this runs over the library rather than the file-based eval/ CLIs (the same functions run underneath).
One definition for benchmarks/stage2_scores.py and the study."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

CONTROLS = ("val_caption_loss", "val_caption_loss_shuffled_images", "val_caption_loss_blank_image",
            "val_caption_loss_text_only", "image_contribution", "distinct_captions",
            "val_object_word_loss", "val_object_word_loss_shuffled_images", "object_word_contribution")
# METEOR is left out: its Java start-up costs ~40 s a run on one core, more than the rest of the scoring.
SCORERS = ("Bleu", "ROUGE_L", "CIDEr")
CAPTION_METRICS = ("Bleu_4", "ROUGE_L", "CIDEr")
EMPTY = "empty"


def model_inputs(model, num_images: int) -> tuple[np.ndarray, list[int]]:
    """The test scenes as the run's vision tower reads them: pixels, or ground-truth object tokens (oracle)."""
    from ..data.oracle_tokens import scenes_tokens
    from ..data.scenes import cached_scenes
    from ..models.oracle_vision import OracleVision

    oracle = isinstance(model.vision, OracleVision)
    size = model.vision.config.image_size
    scenes = cached_scenes("test", num_images, size, max_objects=model.vision.config.max_objects if oracle else 6)
    images, _, ids = scenes.arrays()
    return (scenes_tokens(scenes, model.vision.config.max_objects) if oracle else images), ids


def stage2_scores(run_dir, annotations: dict, num_images: int, pope_images: int, shots: list[int], seed: int) -> dict:
    """`annotations`: the test scenes' COCO export (data/coco_export.py:export_coco) of at least `num_images`."""
    import torch

    from ..evaluation.captioner import caption_images, load_captioner
    from ..evaluation.captioning import chair_report
    from ..metrics.caption_metrics import blind_captions, references_from_coco, score_captions
    from ..evaluation.pope import answer_pope, choose_shots, instance_questions
    from ..evaluation.pope_statements import STATEMENT_TEMPLATES, answer_by_statements
    from ..metrics.pope import SETTINGS, pope_scores
    from ..models.oracle_vision import OracleVision

    torch.manual_seed(seed)
    model, prompts = load_captioner(str(run_dir))
    inputs, ids = model_inputs(model, num_images)
    captions = caption_images(model, prompts, inputs, batch_size=50, progress=False, max_new_tokens=30)
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.json"
        results.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in zip(ids, captions)]))
        chair = chair_report(str(results), annotations["captions"], annotations["instances"], annotations["synonyms"],
                             blind_seed=seed).result
    # pycocoevalcap refuses an empty caption: an undertrained captioner's empty output is scored as the word
    # "empty" (which matches no reference), and counted.
    references = references_from_coco(json.loads(Path(annotations["captions"]).read_text()))
    scorable = [{"image_id": i, "caption": c.strip() or EMPTY} for i, c in zip(ids, captions)]
    metrics = score_captions(scorable, references, scorers=SCORERS)["overall"]
    blind = score_captions(blind_captions(references, ids, seed), references, scorers=SCORERS)["overall"]
    by_id = dict(zip(ids, inputs))
    questions, _ = instance_questions(annotations["instances"], SETTINGS, pope_images, seed)
    pope = {}
    for k in shots:
        for setting, qs in questions.items():
            answers = answer_pope(model, prompts, qs, choose_shots(qs, k, seed), by_id, batch_size=32)
            pope[f"{setting}_{k}shot"] = pope_scores(qs, answers)
    # The same questions answered from caption likelihoods (not POPE's prompt), and its control: each image's
    # answers read from the next asked image (chance: 50), i.e. the same score table with its rows shifted.
    asked = list(dict.fromkeys(q["image_id"] for qs in questions.values() for q in qs))
    following = {i: asked[(k + 1) % len(asked)] for k, i in enumerate(asked)}
    every = [q for qs in questions.values() for q in qs]  # one score table: the settings share their images
    scored: dict = {}
    for suffix in ("", "_another_image"):
        if suffix:
            scored = {(i, o): scored[following[i], o] for i, o in scored}
        answers = iter(answer_by_statements(model, prompts, every, by_id, STATEMENT_TEMPLATES["scenes"],
                                            cache=scored))
        for setting, qs in questions.items():
            pope[f"{setting}_statement{suffix}"] = pope_scores(qs, [next(answers) for _ in qs])
    final = json.loads((Path(run_dir) / "eval_results.json").read_text())
    return {"run": str(run_dir), "oracle": isinstance(model.vision, OracleVision), "examples": captions[:5],
            "distinct_test_captions": len(set(captions)) / len(captions),
            "empty_captions": sum(not c.strip() for c in captions),
            **{k: metrics[k] for k in CAPTION_METRICS}, **{f"blind_{k}": blind[k] for k in CAPTION_METRICS},
            "CHAIRi": chair["CHAIRi"], "CHAIRs": chair["CHAIRs"],
            "objects_per_caption": chair["mean_objects_per_caption"],
            "blind_CHAIRi": chair["blind_baseline"]["CHAIRi"], "blind_CHAIRs": chair["blind_baseline"]["CHAIRs"],
            "blind_objects_per_caption": chair["blind_baseline"]["mean_objects_per_caption"],
            "pope": pope, **{k: final.get(k) for k in CONTROLS}, "step": final.get("step")}

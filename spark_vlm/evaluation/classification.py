"""Zero-shot classification of a class-folder tree (ImageNet layout) with a stage-1 run.

Class names are the folder names with underscores as spaces. Each class's prompt embeddings (one per template)
are averaged into one classifier vector; an image gets the class of highest cosine. Reports acc@1, acc@5 and mean
per-class recall (percent).
"""
from __future__ import annotations

from ..data.images import SkipCounter
from ..data.readers import load_pairs, read_class_folders
from ..metrics.classification import classification_metrics, zero_shot_classifier
from .report import Report, skip_summary
from .stage1_run import CLIP_TEMPLATES, image_embeddings, load_stage1_run, prompt_embeddings


def classification_report(checkpoint, image_dir, templates=CLIP_TEMPLATES, batch_size: int = 64,
                          strict: bool = False) -> Report:
    if any("{}" not in t for t in templates):
        raise ValueError("every template needs a {} for the class name")
    model, tokenizer = load_stage1_run(checkpoint)
    records, class_names = read_class_folders(image_dir)
    if not class_names:
        raise ValueError(f"no class folders in {image_dir}")
    counter = SkipCounter(what="images")
    images, _, kept = load_pairs(records, model.config.image_size, strict=strict, counter=counter,
                                 require_captions=False)
    labels = [records[i]["label"] for i in kept]  # image_id = record index for class folders

    names = [c.replace("_", " ") for c in class_names]
    classifier = zero_shot_classifier(prompt_embeddings(model, tokenizer, names, templates, batch_size))
    logits = image_embeddings(model, images, batch_size) @ classifier.t()
    metrics = classification_metrics(logits, labels, ks=(1, 5))

    result = {"checkpoint": checkpoint, "data": image_dir, "num_classes": len(names),
              "num_templates": len(templates), **metrics, "class_names": names, "skipped": skip_summary(counter)}
    return Report("Zero-shot classification", result)

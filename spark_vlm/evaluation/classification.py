"""Zero-shot classification of a class-folder tree (ImageNet layout) with a stage-1 run.

Class names: a class-name file (one name a line, in the sorted folder order), the bundled ImageNet names for a
tree of the 1000 WordNet-id folders, else the folder names with underscores as spaces. Each class's prompt
embeddings (one per template; default: CLIP's 80 ImageNet templates) are averaged into one classifier vector; an
image gets the class of highest cosine. Reports acc@1, acc@5 and mean per-class recall (percent), beside chance
(1 / number of classes) and the template set and class-name source used.
"""
from __future__ import annotations

from ..data.images import SkipCounter
from ..data.readers import load_pairs, read_class_folders
from ..metrics.classification import classification_metrics, zero_shot_classifier
from .class_prompts import class_names_for, resolve_templates
from .report import Report, check_batch_size, skip_summary
from .stage1_run import image_embeddings, load_stage1_run, prompt_embeddings


def classification_report(checkpoint, image_dir, templates="imagenet80", class_names_file=None,
                          batch_size: int = 64, strict: bool = False) -> Report:
    check_batch_size(batch_size)  # before any loading
    templates, template_set = resolve_templates(templates)
    records, folders = read_class_folders(image_dir)
    if not folders:
        raise ValueError(f"no class folders in {image_dir}")
    names, names_from = class_names_for(folders, class_names_file)
    model, tokenizer = load_stage1_run(checkpoint)
    counter = SkipCounter(what="images")
    images, _, kept = load_pairs(records, model.config.image_size, strict=strict, counter=counter,
                                 require_captions=False)
    labels = [records[i]["label"] for i in kept]  # image_id = record index for class folders
    if not labels:
        raise ValueError(f"no readable image in the class folders of {image_dir} ({skip_summary(counter)})")

    classifier = zero_shot_classifier(prompt_embeddings(model, tokenizer, names, templates, batch_size))
    logits = image_embeddings(model, images, batch_size) @ classifier.t()
    metrics = classification_metrics(logits, labels, ks=(1, 5))

    result = {"checkpoint": checkpoint, "data": image_dir, "num_classes": len(names),
              "chance_acc@1": 100.0 / len(names), "chance_acc@5": 100.0 * min(5, len(names)) / len(names),
              "template_set": template_set, "num_templates": len(templates), "class_names_from": names_from,
              **metrics, "class_names": names, "skipped": skip_summary(counter)}
    return Report("Zero-shot classification", result)

"""Fine-grained probes (SugarCrepe-style) with a stage-1 run: does the model prefer the true caption to a
one-detail edit?

Probes (count, color_binding, relation_swap, absent_object) are written from the ground-truth objects
(spark_vlm/data/probes.py), balanced so that text-only heuristics sit at chance. An item is passed when the
global image-text similarity of the true caption is strictly above that of its negative. Each type's accuracy is
reported beside its chance level and its text-only controls: the same model with a blank grey image (what the
text encoder prefers by itself) and the heuristics "the shorter caption wins" / "the smaller number wins".
"""
from __future__ import annotations

from ..data.images import SkipCounter
import numpy as np

from ..data.probes import (PROBE_TYPES, build_probes, coco_objects, heuristic_accuracy, probe_accuracy,
                          scene_objects)
from ..data.readers import load_pairs, read_coco_captions
from ..data.scene_vocab import SHAPES
from ..data.scenes import SceneConfig
from ..data.text import NUMBER_WORDS
from .data import builtin_scenes, scene_images
from .report import Report, read_json, skip_summary
from .stage1_run import image_embeddings, load_stage1_run, text_embeddings


def probe_data(image_size: int, instances: str | None, annotations: str | None, image_dir: str | None,
               num_images: int, strict: bool):
    """(images, image_ids, {image_id: objects}, vocabulary, largest number word, data description, skip counter):
    the first built-in test scenes, or the images of a COCO instances file (listed by `annotations` when given).
    The scenes' captions never count past their most objects per image, so neither do their probes."""
    if not instances:
        scenes = builtin_scenes("test", num_images, image_size)
        objects = {s["image_id"]: scene_objects(s) for s in scenes}
        return (scene_images(scenes, image_size), list(objects), objects, list(SHAPES),
                SceneConfig.max_objects, f"built-in scenes, test split, {len(scenes)} images", None)
    if not image_dir:
        raise ValueError("--image-dir is required with --instances")
    objects, vocabulary = coco_objects(read_json(instances, "instances"), where=instances)
    records = [{**r, "captions": []} for r in read_coco_captions(annotations or instances, image_dir)]
    counter = SkipCounter(what="images")
    images, _, ids = load_pairs(records, image_size, strict=strict, counter=counter, require_captions=False)
    return (images, ids, {i: objects.get(i, []) for i in ids}, vocabulary, len(NUMBER_WORDS), instances,
            counter)


def probes_report(checkpoint, instances: str | None = None, annotations: str | None = None,
                  image_dir: str | None = None, num_images: int = 500, seed: int = 0, batch_size: int = 64,
                  strict: bool = False) -> Report:
    model, tokenizer = load_stage1_run(checkpoint)
    images, ids, objects, vocabulary, max_count, data, counter = probe_data(model.config.image_size, instances,
                                                                            annotations, image_dir, num_images, strict)
    items, skipped = build_probes(objects, vocabulary, seed=seed, max_count=max_count)

    # Encode every distinct text once; score = cosine of the item's image with each text.
    texts = sorted({t for it in items for t in [it["positive"], *it["negatives"]]})
    column = {t: j for j, t in enumerate(texts)}
    row = {image_id: i for i, image_id in enumerate(ids)}
    size = model.config.image_size
    blank = np.full((1, size, size, 3), 128, np.uint8)  # mid-grey: no object, no colour, no layout
    text = text_embeddings(model, tokenizer, texts)
    sim = (image_embeddings(model, images, batch_size) @ text.t()).numpy()
    blank_sim = (image_embeddings(model, blank, 1) @ text.t()).numpy()[0]
    scores = probe_accuracy(items, [sim[row[it["image_id"]], column[it["positive"]]] for it in items],
                            [[sim[row[it["image_id"]], column[t]] for t in it["negatives"]] for it in items])
    blind = probe_accuracy(items, [blank_sim[column[it["positive"]]] for it in items],
                           [[blank_sim[column[t]] for t in it["negatives"]] for it in items])
    heuristics = heuristic_accuracy(items)
    for t, v in scores["per_type"].items():
        v["blank_image"] = blind["per_type"][t]["accuracy"]
        v.update({name: acc[t] for name, acc in heuristics.items()})

    result = {"checkpoint": checkpoint, "data": data, "num_images": len(ids), "num_items": len(items),
              **scores, "blank_image_mean_accuracy": blind["mean_accuracy"], "skipped_probes": skipped,
              "skipped": skip_summary(counter),
              "examples": [next(it for it in items if it["type"] == t) for t in PROBE_TYPES
                           if any(it["type"] == t for it in items)]}
    rows = [{"probe": t, "accuracy": v["accuracy"], "chance": v["chance"], "blank image": v["blank_image"],
             "shorter wins": v["shorter_wins"], "smaller number wins": v["smaller_number_wins"],
             "items": v["num_items"], "skipped images": skipped.get(t, 0)} for t, v in scores["per_type"].items()]
    rows.append({"probe": "mean", "accuracy": scores["mean_accuracy"], "chance": "",
                 "blank image": blind["mean_accuracy"], "shorter wins": "", "smaller number wins": "",
                 "items": len(items), "skipped images": ""})
    return Report("Fine-grained probes", result, rows)

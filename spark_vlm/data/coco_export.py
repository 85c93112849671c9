"""Export procedural scenes in COCO format (captions + instances), so standard tools can read them.

    python -m spark_vlm.data.coco_export --out DIR --split val --num-images 500 [--image-size 64] [--seed 0]

writes
    DIR/{split}/{image_id:012d}.png
    DIR/annotations/captions_{split}.json     COCO captions (images, annotations[{id, image_id, caption}])
    DIR/annotations/instances_{split}.json    COCO instances with uncompressed-RLE masks, plus our own
                                              "color" and "size" keys that COCO readers ignore
    DIR/annotations/synonyms.json             {canonical shape: [synonyms...]} for hallucination scoring

RLE is COCO's uncompressed form: run lengths over the mask flattened in column-major (Fortran)
order, starting with the run of zeros (which may be 0). Implemented here in numpy so nothing
depends on pycocotools.
"""

import argparse
import json
import os
from dataclasses import asdict

import numpy as np
from PIL import Image
from tqdm import tqdm

from spark_vlm.data.scene_vocab import SHAPE_SYNONYMS, SHAPES
from spark_vlm.data.scenes import SceneConfig, generate_scene

CATEGORIES = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
CATEGORY_IDS = {s: i + 1 for i, s in enumerate(SHAPES)}


def mask_to_rle(mask: np.ndarray) -> dict:
    """Bool/0-1 mask [h, w] -> {"counts": [run lengths], "size": [h, w]} (COCO uncompressed RLE)."""
    mask = np.asarray(mask)
    h, w = mask.shape
    flat = mask.ravel(order="F").astype(bool)
    if flat.size == 0:
        return {"counts": [], "size": [h, w]}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1      # indices where a new run starts
    counts = np.diff(np.concatenate([[0], change, [flat.size]]))
    if flat[0]:                                             # COCO runs always start with zeros
        counts = np.concatenate([[0], counts])
    return {"counts": [int(c) for c in counts], "size": [int(h), int(w)]}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Inverse of mask_to_rle: uncompressed RLE -> bool mask [h, w]."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {h * w}")
    values = np.arange(len(counts)) % 2 == 1                # runs alternate 0, 1, 0, 1, ...
    return np.repeat(values, counts).reshape((h, w), order="F")


def export_coco(out_dir: str, split: str, num_images: int, config: SceneConfig = SceneConfig()) -> dict:
    """Write images + COCO JSONs for scenes 0..num_images-1 of `split`; returns the written paths."""
    img_dir, ann_dir = os.path.join(out_dir, split), os.path.join(out_dir, "annotations")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    info = {"description": f"spark-vlm procedural scenes ({split})", "version": "1.0",
            "year": 2025, "contributor": "spark_vlm.data.scenes",
            "scene_config": asdict(config)}
    licenses = [{"id": 1, "name": "CC0 (procedurally generated)", "url": ""}]
    images, captions, instances = [], [], []
    S = config.image_size
    for i in tqdm(range(num_images), desc=f"export {split}"):
        sc = generate_scene(config, split, i)
        file_name = f"{sc['image_id']:012d}.png"
        Image.fromarray(sc["image"]).save(os.path.join(img_dir, file_name))
        images.append({"id": sc["image_id"], "file_name": file_name, "width": S, "height": S,
                       "license": 1})
        for cap in sc["captions"]:
            captions.append({"id": len(captions) + 1, "image_id": sc["image_id"], "caption": cap})
        for o in sc["objects"]:
            instances.append({"id": len(instances) + 1, "image_id": sc["image_id"],
                              "category_id": CATEGORY_IDS[o["shape"]], "bbox": o["bbox"],
                              "area": o["area"], "iscrowd": 0, "segmentation": mask_to_rle(o["mask"]),
                              "color": o["color"], "size": o["size"]})
    paths = {"captions": os.path.join(ann_dir, f"captions_{split}.json"),
             "instances": os.path.join(ann_dir, f"instances_{split}.json"),
             "synonyms": os.path.join(ann_dir, "synonyms.json"), "images": img_dir}
    with open(paths["captions"], "w") as f:
        json.dump({"info": info, "licenses": licenses, "images": images, "annotations": captions}, f)
    with open(paths["instances"], "w") as f:
        json.dump({"info": info, "licenses": licenses, "images": images, "annotations": instances,
                   "categories": CATEGORIES}, f)
    with open(paths["synonyms"], "w") as f:
        json.dump(SHAPE_SYNONYMS, f, indent=1)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description="Export procedural scenes in COCO format.")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--num-images", type=int, default=500)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    config = SceneConfig(image_size=args.image_size, seed=args.seed)
    paths = export_coco(args.out, args.split, args.num_images, config)
    print(f"wrote {args.num_images} images to {paths['images']} and annotations to "
          f"{os.path.dirname(paths['captions'])}")


if __name__ == "__main__":
    main()

"""Readers for real image-caption data on local disk, and a loader that decodes it into arrays.

Every caption reader returns a list of plain records, one per image:

    {"image_id": int, "path": str, "captions": list[str]}        (+ "label" for class folders)

Readers only parse annotation files; they never open images, so they are fast and a bad image
cannot stop them. `load_pairs(records, image_size)` then decodes everything with `load_image`,
skipping (and counting) what is broken, and returns the (images, captions, image_ids) arrays that
`CaptionedImages` takes. Malformed *annotation* files (bad JSON, no caption column) do raise: that
is a configuration error, not a bad sample.

Supported layouts:
    read_coco_captions      COCO captions_{train,val}{2014,2017}.json + the image folder
    read_coco_instances     COCO instances_*.json -> per-image objects (for evaluation)
    read_karpathy           Karpathy splits dataset_{coco,flickr30k,flickr8k}.json
    read_imagefolder        Hugging Face `imagefolder`: metadata.jsonl / metadata.csv with file_name
    read_class_folders      ImageNet-style root/class_name/*.jpg
    read_voc_segmentation   Pascal VOC JPEGImages + SegmentationClass palette PNGs
    WebDataset tar shards   streamed by webdataset_reader.py
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .coco_json import coco_entries
from .images import NO_CAPTION, BadSample, SkipCounter, clean_captions, handle_bad, load_image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _read_json(path):
    """A JSON file's content; malformed JSON or non-UTF-8 text raises ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e.reason} at byte {e.start}") from e


def _int_id(value, where: str) -> int:
    """COCO ids here are integers (or strings of digits, as some exports write them)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError(f"{where} is {value!r}; expected an integer id")


# ---------------------------------------------------------------------------------------------------
# COCO


def read_coco_captions(annotations_json, image_dir) -> list[dict]:
    """COCO captions (2014 or 2017: same schema) -> records, in the order of `images[]`.

    `image_dir` is the folder holding the file_names (e.g. coco/val2014 or coco/val2017). Images
    listed without any caption get captions=[] (load_pairs skips them as "no caption").
    """
    data = _read_json(annotations_json)
    images = coco_entries(data, "images", str(annotations_json), strings=("file_name",), others=("id",))
    captions = defaultdict(list)
    if "annotations" in data:                            # image_info_test*.json has none
        for i, ann in enumerate(coco_entries(data, "annotations", str(annotations_json), others=("image_id",))):
            captions[_int_id(ann["image_id"], f"{annotations_json}: annotations[{i}].image_id")].append(ann.get("caption"))
    records = []
    for i, img in enumerate(images):
        image_id = _int_id(img["id"], f"{annotations_json}: images[{i}].id")
        records.append({"image_id": image_id, "path": os.path.join(image_dir, img["file_name"]),
                        "captions": captions.pop(image_id, [])})
    if captions:
        log.warning("%s: %d captions refer to image ids missing from images[]; ignored",
                    annotations_json, sum(len(c) for c in captions.values()))
    return records


def read_coco_instances(instances_json) -> tuple[dict[int, list[dict]], list[dict]]:
    """COCO instances -> ({image_id: [{category, category_id, bbox, segmentation, area, iscrowd}]},
    categories). Every image in images[] has an entry, possibly empty. bbox is COCO's [x, y, w, h];
    segmentation is passed through as stored (polygons or RLE)."""
    data, where = _read_json(instances_json), str(instances_json)
    categories = coco_entries(data, "categories", where, ids=("id",), strings=("name",))
    names = {c["id"]: c["name"] for c in categories}
    images = coco_entries(data, "images", where, others=("id",)) if "images" in data else []
    objects = {_int_id(img["id"], f"{where}: images[{i}].id"): [] for i, img in enumerate(images)}
    annotations = coco_entries(data, "annotations", where, others=("image_id", "category_id")) if "annotations" in data else []
    for i, ann in enumerate(annotations):
        if ann["category_id"] not in names:
            raise ValueError(f"{where}: annotations[{i}] has unknown category_id {ann['category_id']!r}")
        objects.setdefault(_int_id(ann["image_id"], f"{where}: annotations[{i}].image_id"), []).append({
            "category": names[ann["category_id"]], "category_id": ann["category_id"],
            "bbox": ann.get("bbox"), "segmentation": ann.get("segmentation"),
            "area": ann.get("area"), "iscrowd": ann.get("iscrowd", 0)})
    return objects, categories


# ---------------------------------------------------------------------------------------------------
# Karpathy splits

# The standard convention (Karpathy & Fei-Fei 2015, and every paper reporting "Karpathy test"):
# train on train + restval (113k COCO images), validate on the 5k val, test on the 5k test images.
KARPATHY_SPLITS = {"train": ("train", "restval"), "restval": ("restval",), "val": ("val",),
                   "test": ("test",)}


def read_karpathy(json_path, image_dir, split: str) -> list[dict]:
    """Karpathy split JSON -> records of one split. split="train" includes "restval" (see above).

    Image path = image_dir/filepath/filename when the entry has a filepath (COCO: "val2014"), else
    image_dir/filename (Flickr). image_id = cocoid when present (so it matches COCO ids), else imgid.
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"split must be one of {sorted(KARPATHY_SPLITS)}, got {split!r}")
    wanted = KARPATHY_SPLITS[split]
    records = []
    for img in _read_json(json_path)["images"]:
        if img.get("split") not in wanted:
            continue
        parts = [image_dir, img["filepath"], img["filename"]] if img.get("filepath") else \
            [image_dir, img["filename"]]
        image_id = img["cocoid"] if img.get("cocoid") is not None else img["imgid"]
        records.append({"image_id": int(image_id), "path": os.path.join(*parts),
                        "captions": [s.get("raw") for s in img.get("sentences", [])]})
    return records


# ---------------------------------------------------------------------------------------------------
# Hugging Face imagefolder


def read_imagefolder(root) -> list[dict]:
    """`datasets` imagefolder layout: root/metadata.jsonl (or .csv) with `file_name` + a caption column.

    The caption column is `text`, `caption` or `captions`; in jsonl it may hold a list of captions.
    file_name is relative to root and, as in `datasets`, may not escape it. image_id = row index.
    """
    jsonl, csv_path = os.path.join(root, "metadata.jsonl"), os.path.join(root, "metadata.csv")
    if os.path.exists(jsonl) and os.path.exists(csv_path):
        raise ValueError(f"{root} has both metadata.jsonl and metadata.csv; keep one")
    if os.path.exists(jsonl):
        meta, rows = jsonl, []
        with open(jsonl, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{jsonl}:{n}: not valid JSON ({exc})") from exc
    elif os.path.exists(csv_path):
        meta = csv_path
        with open(csv_path, encoding="utf-8-sig", newline="") as f:   # utf-8-sig: Excel writes a BOM
            rows = list(csv.DictReader(f))
    else:
        raise FileNotFoundError(f"no metadata.jsonl or metadata.csv in {root}")
    columns = set().union(*(r.keys() for r in rows)) if rows else set()
    column = next((c for c in ("text", "caption", "captions") if c in columns), None)
    if rows and (column is None or "file_name" not in columns):
        raise ValueError(f"{meta} needs a file_name and a text/caption column, has {sorted(columns)}")
    records = []
    for i, row in enumerate(rows):
        name = row.get("file_name") or ""
        rel = os.path.normpath(name)
        if not name or os.path.isabs(name) or rel == ".." or rel.startswith(".." + os.sep):
            raise ValueError(f"{meta} row {i}: file_name {name!r} must be a path inside {root}")
        captions = row.get(column)
        records.append({"image_id": i, "path": os.path.join(root, rel),
                        "captions": list(captions) if isinstance(captions, list) else [captions]})
    return records


# ---------------------------------------------------------------------------------------------------
# Class folders (ImageNet layout)


def read_class_folders(root) -> tuple[list[dict], list[str]]:
    """root/class_name/*.jpg -> (records with "label" = index into class_names, sorted class_names).

    Records have captions=[] (turn class names into prompts where you classify); image_id is the
    record's index, so after load_pairs(..., require_captions=False) the labels of the kept images
    are `[records[i]["label"] for i in image_ids]`.
    """
    class_names = sorted(d for d in os.listdir(root)
                         if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    records = []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, name)
        for file in sorted(os.listdir(folder)):
            if file.lower().endswith(IMAGE_EXTENSIONS) and not file.startswith("."):
                records.append({"image_id": len(records), "path": os.path.join(folder, file),
                                "captions": [], "label": label})
    return records, class_names


# ---------------------------------------------------------------------------------------------------
# Pascal VOC segmentation

# Mask value k is the class VOC_CLASSES[k]; 0 is background and 255 marks object borders / "ignore".
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
VOC_IGNORE = 255


def voc_colormap(n: int = 256) -> np.ndarray:
    """The palette the VOC devkit writes masks with: [n, 3] uint8 (class k's colour, 255 = cream)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):                                 # spread the bits of k over the channels
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[k] = (r, g, b)
    return cmap


def read_voc_segmentation(voc_root, split: str = "val") -> list[dict]:
    """VOC tree -> [{image_path, mask_path, image_id, name}] for ImageSets/Segmentation/{split}.txt.

    voc_root is the folder holding JPEGImages/ (e.g. VOCdevkit/VOC2012); the VOCdevkit folder
    itself also works. image_id is the line index in the split file; name is the VOC id "2007_000033".
    """
    if not os.path.isdir(os.path.join(voc_root, "JPEGImages")):
        for year in ("VOC2012", "VOC2007"):
            if os.path.isdir(os.path.join(voc_root, year, "JPEGImages")):
                voc_root = os.path.join(voc_root, year)
                break
    split_file = os.path.join(voc_root, "ImageSets", "Segmentation", f"{split}.txt")
    with open(split_file, encoding="utf-8") as f:
        names = [line.split()[0] for line in f if line.strip()]
    return [{"image_path": os.path.join(voc_root, "JPEGImages", f"{name}.jpg"),
             "mask_path": os.path.join(voc_root, "SegmentationClass", f"{name}.png"),
             "image_id": i, "name": name} for i, name in enumerate(names)]


def load_voc_mask(path) -> np.ndarray:
    """A VOC mask -> uint8 [H, W] of class indices (0..20, 255 = ignore).

    VOC masks are palette ("P") PNGs: the pixel values ARE the class indices, so they are read
    as-is, never converted to RGB. Grayscale masks (e.g. SBD "SegmentationClassAug") are indices
    too. RGB masks (re-saved by some tool) are mapped back through the VOC colormap.
    """
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise BadSample(path, "missing file" if not os.path.isfile(path) else "zero-byte file")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("P", "L"):
                return np.array(img, dtype=np.uint8)
            rgb = np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadSample(path, "corrupt file", str(exc)) from exc
    lookup = {tuple(c): k for k, c in enumerate(voc_colormap()) if k <= 20 or k == VOC_IGNORE}
    colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    unknown = [tuple(c) for c in colours if tuple(c) not in lookup]
    if unknown:
        raise BadSample(path, "corrupt file", f"RGB mask has non-VOC colours {unknown[:3]}")
    index = np.array([lookup[tuple(c)] for c in colours], dtype=np.uint8)
    return index[inverse.reshape(-1)].reshape(rgb.shape[:2])


# ---------------------------------------------------------------------------------------------------
# Decoding records into arrays


def _decode(record: dict, image_size: int):
    """Worker: the decoded image or the BadSample (returned, so the main thread decides what to do)."""
    try:
        return load_image(record["path"], image_size)
    except BadSample as exc:
        return exc


def load_pairs(records: list[dict], image_size: int, strict: bool = False,
               counter: SkipCounter | None = None, require_captions: bool = True,
               num_threads: int | None = None) -> tuple[np.ndarray, list[list[str]], list[int]]:
    """Decode records -> (images uint8 [N, S, S, 3], captions [N lists], image_ids [N]).

    Bad images and empty captions are skipped and counted in `counter` (a new SkipCounter when
    None; its summary is logged at the end). Each kept image keeps its own captions: skipping one
    never shifts another. strict=True raises BadSample (naming the file) at the first bad sample.
    require_captions=False keeps images without captions (e.g. class folders). Decoding runs in
    `num_threads` threads (PIL releases the GIL while decoding); results keep the records' order.
    """
    counter = counter if counter is not None else SkipCounter(what="samples")
    ids = [r["image_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate image_id in records; ids must identify images for retrieval eval")

    # Captions first: an image that has none left is skipped without paying for its decode.
    todo = []
    for record in records:
        caps = clean_captions(record.get("captions"), record["path"], counter, strict)
        if caps or not require_captions:
            todo.append((record, caps))
        else:
            handle_bad(BadSample(record["path"], NO_CAPTION), counter, strict)

    images = np.empty((len(todo), image_size, image_size, 3), dtype=np.uint8)
    captions, image_ids = [], []
    num_threads = num_threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(num_threads) as pool:
        decoded = pool.map(_decode, (r for r, _ in todo), [image_size] * len(todo))
        for (record, caps), result in tqdm(zip(todo, decoded), total=len(todo), desc="decode images",
                                           leave=False, mininterval=1.0):
            if isinstance(result, BadSample):
                if strict:                       # stop the queued decodes before raising
                    pool.shutdown(wait=False, cancel_futures=True)
                handle_bad(result, counter, strict)
                continue
            images[len(captions)] = result
            captions.append(caps)
            image_ids.append(int(record["image_id"]))
    if counter.total:
        log.warning(counter.summary())
    return images[:len(captions)], captions, image_ids


def records_to_hf_dataset(records: list[dict]):
    """Records -> a `datasets.Dataset` with columns image (lazily decoded from its path), captions,
    image_id, path (+ label when every record has one). Nothing is decoded or checked here:
    `datasets` opens an image only when a row is read, so use load_pairs for the skip accounting."""
    import datasets                                    # lazy: only this function needs it

    columns = {"image": [r["path"] for r in records],
               "captions": [list(r.get("captions") or []) for r in records],
               "image_id": [int(r["image_id"]) for r in records],
               "path": [r["path"] for r in records]}
    features = {"image": datasets.Image(), "captions": datasets.List(datasets.Value("string")),
                "image_id": datasets.Value("int64"), "path": datasets.Value("string")}
    if records and all("label" in r for r in records):
        columns["label"] = [int(r["label"]) for r in records]
        features["label"] = datasets.Value("int64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))

"""Real-data readers on tiny fixtures written here: COCO (2014/2017), Karpathy, imagefolder, WebDataset,
class folders, VOC - with every kind of bad file, odd image mode and empty caption mixed in."""
import io
import json
import logging
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from spark_vlm.data.coco_export import export_coco
from spark_vlm.data.images import (BadSample, SkipCounter, clean_captions, handle_bad, load_image,
                                   resize_center_crop)
from spark_vlm.data.readers import (VOC_CLASSES, load_pairs, load_voc_mask, read_class_folders,
                                    read_coco_captions, read_coco_instances, read_imagefolder,
                                    read_karpathy, read_voc_segmentation, records_to_hf_dataset, voc_colormap)
from spark_vlm.data.scenes import SceneConfig
from spark_vlm.data.webdataset_reader import (WebDatasetPairs, collate_pairs, expand_shards,
                                              iter_webdataset, stable_image_id)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(h=48, w=48, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def two_halves(h, w, left, right, mode="RGB") -> Image.Image:
    img = Image.new(mode, (w, h), left)
    img.paste(Image.new(mode, (w - w // 2, h), right), (w // 2, 0))
    return img


def odd_image_bytes() -> dict:
    """Valid images in awkward modes -> (file bytes, check(decoded uint8 [H, W, 3]))."""
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette(list(RED) + list(BLUE) + [0] * 762)
    palette.paste(1, (4, 0, 8, 8))                          # left half index 0 (transparent), right 1
    exif = Image.Exif()
    exif[0x0112] = 6                                        # "rotate 90 clockwise to display"
    return {
        "gray.png": (encode(Image.new("L", (8, 8), 100), "PNG"), lambda a: (a == 100).all()),
        "palette.png": (encode(palette, "PNG", transparency=0),
                        lambda a: (a[:, :4] == WHITE).all() and (a[:, 4:] == BLUE).all()),
        "rgba.png": (encode(two_halves(8, 8, (*RED, 0), (*GREEN, 255), "RGBA"), "PNG"),
                     lambda a: (a[:, :4] == WHITE).all() and (a[:, 4:] == GREEN).all()),
        "cmyk.jpg": (encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95),
                     lambda a: np.abs(a.astype(int) - RED).max() <= 3),
        # 16-bit 25700 = 100 * 257 must become 100, not clip to 255.
        "16bit.png": (encode(Image.fromarray(np.full((8, 8), 25700, np.uint16)), "PNG"),
                      lambda a: (a == 100).all()),
        # stored 16 high x 32 wide, red left / blue right; displayed 32 high x 16 wide, red on top.
        "exif.jpg": (encode(two_halves(16, 32, RED, BLUE), "JPEG", exif=exif, quality=95),
                     lambda a: a.shape == (32, 16, 3) and (np.abs(a[:14].astype(int) - RED) < 8).all()
                     and (np.abs(a[18:].astype(int) - BLUE) < 8).all()),
    }


def write_bad_files(folder) -> dict:
    """Every kind of broken file -> {name: (path, expected reason)}. missing.jpg is never written."""
    os.makedirs(folder, exist_ok=True)
    jpg, png = encode(noise(), "JPEG"), encode(noise(), "PNG")
    contents = {"corrupt.jpg": (b"definitely not an image " * 8, "not an image"),
                "truncated.jpg": (jpg[:len(jpg) // 2], "truncated file"),
                "truncated.png": (png[:len(png) // 2], "truncated file"),
                "empty.jpg": (b"", "zero-byte file"),
                "missing.jpg": (None, "missing file")}
    out = {}
    for name, (data, reason) in contents.items():
        path = os.path.join(folder, name)
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        out[name] = (path, reason)
    return out


# ---------------------------------------------------------------------------------------------------
# load_image, SkipCounter


def test_load_image_normalises_odd_modes_and_exif(tmp_path):
    for name, (data, check) in odd_image_bytes().items():
        path = tmp_path / name
        path.write_bytes(data)
        for src in (str(path), data):                       # a path and raw bytes decode the same
            a = load_image(src)
            assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, name
            assert check(a), (name, a[0, 0], a[-1, -1])
    # float and 32-bit int TIFFs are scaled too, not clipped
    i32 = encode(Image.fromarray(np.array([[0, 25700, 65535]], np.int32)), "TIFF")
    f32 = encode(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), "TIFF")
    assert load_image(i32)[0, :, 0].tolist() == [0, 100, 255]
    assert load_image(f32)[0, :, 0].tolist() == [0, 128, 255]


def test_resize_is_shorter_side_then_center_crop():
    img = Image.new("RGB", (40, 20), RED)                   # 20 high, 40 wide: red | blue | red
    img.paste(Image.new("RGB", (20, 20), BLUE), (10, 0))
    a = load_image(encode(img, "PNG"), image_size=10)
    assert a.shape == (10, 10, 3) and (a[:, 2:8] == BLUE).all()
    assert resize_center_crop(Image.new("RGB", (3, 50)), 16).size == (16, 16)   # upscales too


def test_load_image_bad_files_raise_with_reason_and_path(tmp_path):
    for name, (path, reason) in write_bad_files(tmp_path).items():
        with pytest.raises(BadSample) as info:
            load_image(path, image_size=16)
        assert info.value.reason == reason and info.value.path == path and path in str(info.value)
    with pytest.raises(BadSample, match="shard.tar#k: zero-byte file"):
        load_image(b"", name="shard.tar#k")


def test_skip_counter_and_strict(caplog):
    counter = SkipCounter(max_examples=2)
    with caplog.at_level(logging.WARNING):
        for i, reason in enumerate(["corrupt file", "missing file", "corrupt file"]):
            handle_bad(BadSample(f"img{i}.jpg", reason), counter, strict=False)
    assert counter.total == 3 and counter.counts == {"corrupt file": 2, "missing file": 1}
    assert counter.examples == [("img0.jpg", "corrupt file"), ("img1.jpg", "missing file")]
    assert sum("skipping img" in r.getMessage() for r in caplog.records) == 2   # only the first N
    summary = counter.summary()
    assert "Skipped 3" in summary and "corrupt file: 2" in summary and "img1.jpg (missing file)" in summary
    assert SkipCounter().summary() == "No bad samples skipped."
    with pytest.raises(BadSample, match="img9.jpg"):
        handle_bad(BadSample("img9.jpg", "corrupt file"), counter, strict=True)
    counter = SkipCounter()
    assert clean_captions([" a cat ", "", "  \t", None, "dog"], "x.jpg", counter) == ["a cat", "dog"]
    assert counter.counts == {"empty caption": 3}
    with pytest.raises(BadSample, match="x.jpg: empty caption"):
        clean_captions(["ok", " "], "x.jpg", SkipCounter(), strict=True)


# ---------------------------------------------------------------------------------------------------
# COCO + load_pairs


def make_coco(root, style: str):
    """export_coco's real COCO files, plus odd, bad and caption-less images; 2014 style renames to
    COCO_val2014_*.jpg like the real 2014 release. Returns (captions.json, instances.json, image_dir)."""
    paths = export_coco(str(root), "val", 4, SceneConfig(image_size=32))
    data = json.loads(open(paths["captions"]).read())
    image_dir = paths["images"]
    if style == "2014":
        for img in data["images"]:
            new = f"COCO_val2014_{img['id']:012d}.jpg"
            Image.open(os.path.join(image_dir, img["file_name"])).save(os.path.join(image_dir, new),
                                                                       quality=95)
            img["file_name"] = new
    data["annotations"].append({"id": 900, "image_id": data["images"][0]["id"], "caption": "  \n"})
    extra = {name: content for name, (content, _) in odd_image_bytes().items()}
    extra["nocap.png"] = encode(noise(8, 8), "PNG")
    for name, content in extra.items():
        (root / "val" / name).write_bytes(content)
    names = list(extra) + list(write_bad_files(root / "val"))
    for i, name in enumerate(names):
        image_id = 10 + i
        data["images"].append({"id": image_id, "file_name": name, "width": 8, "height": 8})
        caps = ["", " \t "] if name == "nocap.png" else [f"{name} first", f"{name} second"]
        for c in caps:
            data["annotations"].append({"id": 1000 + len(data["annotations"]), "image_id": image_id,
                                        "caption": c})
    out = root / "annotations" / f"captions_val{style}.json"
    out.write_text(json.dumps(data))
    return str(out), paths["instances"], image_dir


@pytest.mark.parametrize("style", ["2014", "2017"])
def test_coco_captions_load_pairs_skips_bad_and_keeps_captions_aligned(tmp_path, style):
    captions_json, _, image_dir = make_coco(tmp_path, style)
    records = read_coco_captions(captions_json, image_dir)
    assert len(records) == 4 + 7 + 5
    assert all(r["path"].startswith(image_dir) for r in records)
    if style == "2014":
        assert os.path.basename(records[0]["path"]).startswith("COCO_val2014_")

    counter = SkipCounter(max_examples=20)
    images, captions, ids = load_pairs(records, 16, counter=counter)
    assert images.shape == (4 + 6, 16, 16, 3) and images.dtype == np.uint8 and len(captions) == len(ids)
    assert dict(counter.counts) == {"empty caption": 3, "no caption": 1, "not an image": 1,
                                    "truncated file": 2, "zero-byte file": 1, "missing file": 1}
    reported = {os.path.basename(p) for p, _ in counter.examples}
    assert {"corrupt.jpg", "truncated.jpg", "truncated.png", "empty.jpg", "missing.jpg",
            "nocap.png"} <= reported

    # Every kept image carries its own pixels and its own (cleaned) captions: nothing shifted.
    by_id = {r["image_id"]: r for r in records}
    for image, caps, image_id in zip(images, captions, ids):
        rec = by_id[image_id]
        assert caps == [c.strip() for c in rec["captions"] if c.strip()]
        assert np.array_equal(image, load_image(rec["path"], 16))
    assert len(captions[0]) == 5                             # its whitespace caption was dropped

    with pytest.raises(BadSample) as info:                  # strict: stop and name the file
        load_pairs(records, 16, strict=True)
    assert image_dir in str(info.value)
    corrupt = next(r for r in records if r["path"].endswith("corrupt.jpg"))
    with pytest.raises(BadSample, match="corrupt.jpg: not an image"):
        load_pairs([records[1], corrupt], 16, strict=True)


def test_coco_instances(tmp_path):
    _, instances_json, _ = make_coco(tmp_path, "2017")
    objects, categories = read_coco_instances(instances_json)
    raw = json.loads(open(instances_json).read())
    assert [c["name"] for c in categories] == [c["name"] for c in raw["categories"]]
    assert set(objects) == {img["id"] for img in raw["images"]}
    assert sum(len(v) for v in objects.values()) == len(raw["annotations"])
    ann = raw["annotations"][0]
    first = objects[ann["image_id"]][0]
    assert first["bbox"] == ann["bbox"] and first["segmentation"] == ann["segmentation"]
    assert first["category"] == categories[ann["category_id"] - 1]["name"] and "area" in first


# ---------------------------------------------------------------------------------------------------
# Karpathy, imagefolder, class folders


def test_karpathy_splits_paths_and_ids(tmp_path):
    def entry(split, cocoid, folder, name, raw):
        return {"filepath": folder, "filename": name, "split": split, "cocoid": cocoid, "imgid": 0,
                "sentences": [{"raw": r, "tokens": r.lower().split()} for r in raw]}
    coco = {"dataset": "coco", "images": [
        entry("test", 42, "val2014", "COCO_val2014_000000000042.jpg", ["A dog."]),
        entry("restval", 9, "train2014", "COCO_train2014_000000000009.jpg", ["Food.", "A plate."]),
        entry("train", 25, "train2014", "COCO_train2014_000000000025.jpg", ["A giraffe."]),
        entry("val", 73, "val2014", "COCO_val2014_000000000073.jpg", ["A bike."])]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(coco))
    train = read_karpathy(tmp_path / "dataset_coco.json", "/coco", "train")
    assert [r["image_id"] for r in train] == [9, 25]                       # restval joins train
    assert train[0] == {"image_id": 9, "path": "/coco/train2014/COCO_train2014_000000000009.jpg",
                        "captions": ["Food.", "A plate."]}
    assert [r["image_id"] for r in read_karpathy(tmp_path / "dataset_coco.json", "/coco", "test")] == [42]
    assert [r["image_id"] for r in read_karpathy(tmp_path / "dataset_coco.json", "/c", "restval")] == [9]
    with pytest.raises(ValueError):
        read_karpathy(tmp_path / "dataset_coco.json", "/coco", "training")

    flickr = {"dataset": "flickr30k", "images": [
        {"filename": "1000092795.jpg", "split": "test", "imgid": 0, "sentences": [{"raw": "Two men."}]},
        {"filename": "10002456.jpg", "split": "train", "imgid": 1, "sentences": [{"raw": " "}]}]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(flickr))
    (tmp_path / "images").mkdir()
    for name in ("1000092795.jpg", "10002456.jpg"):
        noise(20, 30).save(tmp_path / "images" / name)
    test = read_karpathy(tmp_path / "dataset_flickr30k.json", tmp_path / "images", "test")
    assert test == [{"image_id": 0, "path": str(tmp_path / "images" / "1000092795.jpg"),
                     "captions": ["Two men."]}]
    counter = SkipCounter()
    records = read_karpathy(tmp_path / "dataset_flickr30k.json", tmp_path / "images", "train")
    assert load_pairs(records, 8, counter=counter)[0].shape == (0, 8, 8, 3)
    assert counter.counts == {"empty caption": 1, "no caption": 1}


def test_imagefolder_jsonl_and_csv(tmp_path):
    (tmp_path / "j" / "sub").mkdir(parents=True)
    noise(10, 12).save(tmp_path / "j" / "a.png")
    noise(12, 10).save(tmp_path / "j" / "sub" / "b.jpg")
    noise(8, 8).save(tmp_path / "j" / "c.png")
    rows = [{"file_name": "a.png", "text": "a red square"},
            {"file_name": "sub/b.jpg", "text": ["one", "  two "]},
            {"file_name": "c.png", "text": "   "},
            {"file_name": "gone.png", "text": "never decoded"}]
    (tmp_path / "j" / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = read_imagefolder(tmp_path / "j")
    assert [r["image_id"] for r in records] == [0, 1, 2, 3]
    assert records[1]["path"] == str(tmp_path / "j" / "sub" / "b.jpg")
    counter = SkipCounter()
    images, captions, ids = load_pairs(records, 8, counter=counter)
    assert ids == [0, 1] and captions == [["a red square"], ["one", "two"]]
    assert counter.counts == {"empty caption": 1, "no caption": 1, "missing file": 1}

    ds = records_to_hf_dataset(records)                            # datasets-compatible, decoded lazily
    assert ds.num_rows == 4 and ds[1]["captions"] == ["one", "  two "]
    assert ds[0]["image"].size == (12, 10) and ds[0]["image_id"] == 0

    (tmp_path / "c").mkdir()
    noise(8, 8).save(tmp_path / "c" / "x.jpg")
    (tmp_path / "c" / "metadata.csv").write_text("file_name,caption\nx.jpg,\"a cat, sleeping\"\ny.jpg,\n")
    records = read_imagefolder(tmp_path / "c")
    assert records[0]["captions"] == ["a cat, sleeping"] and records[1]["captions"] == [""]
    (tmp_path / "c" / "metadata.csv").write_text("file_name,caption\n../x.jpg,escape\n")
    with pytest.raises(ValueError, match="inside"):
        read_imagefolder(tmp_path / "c")
    (tmp_path / "c" / "metadata.csv").write_text("file_name,label\nx.jpg,3\n")
    with pytest.raises(ValueError, match="caption"):
        read_imagefolder(tmp_path / "c")


def test_class_folders(tmp_path):
    for cls, names in {"cat": ["a.jpg", "b.png"], "dog": ["c.JPEG"], "bird": []}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            noise(9, 9).save(tmp_path / cls / n, format="PNG" if n.endswith("png") else "JPEG")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"garbage")
    records, classes = read_class_folders(tmp_path)
    assert classes == ["bird", "cat", "dog"]
    assert [(os.path.basename(r["path"]), r["label"]) for r in records] == \
        [("a.jpg", 1), ("b.png", 1), ("broken.jpg", 1), ("c.JPEG", 2)]
    counter = SkipCounter()
    images, _, ids = load_pairs(records, 8, counter=counter, require_captions=False)
    assert images.shape == (3, 8, 8, 3) and [records[i]["label"] for i in ids] == [1, 1, 2]
    assert counter.counts == {"not an image": 1}
    assert records_to_hf_dataset(records)["label"] == [1, 1, 1, 2]


# ---------------------------------------------------------------------------------------------------
# WebDataset


def write_shards(root, per_shard: int = 4) -> tuple[list[str], dict]:
    """12 samples in shards of `per_shard`; returns (paths, {key: captions} of the structurally good)."""
    jpg = encode(noise(12, 12), "JPEG")
    samples = [  # (key, {field: bytes})
        ("000000", {"jpg": jpg, "txt": b"zero"}), ("000001", {"jpg": jpg, "txt": b"one\n"}),
        ("sub/000002", {"jpeg": jpg, "txt": b"two"}), ("000003", {"png": encode(noise(9, 9), "PNG"),
                                                                   "txt": b"three"}),
        ("img_a", {"jpg": jpg, "json": json.dumps({"caption": "a"}).encode()}),
        ("img_b", {"jpg": b"corrupt jpeg bytes", "txt": b"bee"}),          # fails only on decode
        ("img_c", {"webp": encode(noise(9, 9), "WEBP"), "txt": b"sea", "seg.png": b"x"}),
        ("img_d", {"jpg": jpg, "json": json.dumps({"captions": ["d1", " ", "d2"]}).encode()}),
        ("000008", {"jpg": jpg, "txt": b"eight", "json": b"{\"caption\": \"ignored\"}"}),
        ("000009", {"txt": b"no image here"}),
        ("000010", {"jpg": jpg, "txt": b"   "}),
        ("000011", {"jpg": jpg, "json": json.dumps({"text": "eleven"}).encode()})]
    paths, good = [], {}
    for s in range(len(samples) // per_shard):
        path = str(root / f"shard-{s:03d}.tar")
        with tarfile.open(path, "w") as tar:
            for key, fields in samples[per_shard * s: per_shard * (s + 1)]:
                for field, data in fields.items():
                    info = tarfile.TarInfo(f"{key}.{field}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    good = {"000000": ["zero"], "000001": ["one"], "sub/000002": ["two"], "000003": ["three"],
            "img_a": ["a"], "img_b": ["bee"], "img_c": ["sea"], "img_d": ["d1", "d2"],
            "000008": ["eight"], "000011": ["eleven"]}
    return paths, good


# 3 shards: (2, 2) = 4 consumers > 3 shards takes the sample-striding fallback; 6 shards split by shard.
@pytest.mark.parametrize("per_shard,world_size,num_workers",
                         [(4, 1, 1), (4, 2, 1), (4, 3, 1), (4, 2, 2), (2, 2, 2), (2, 2, 3)])
def test_webdataset_sharding_reads_every_sample_exactly_once(tmp_path, per_shard, world_size,
                                                             num_workers):
    paths, good = write_shards(tmp_path, per_shard)
    seen, total = [], SkipCounter()
    for rank in range(world_size):
        for worker in range(num_workers):
            counter = SkipCounter()
            for s in iter_webdataset(str(tmp_path / "*.tar"), rank, world_size, worker, num_workers,
                                     counter=counter):
                assert s["captions"] == good[s["key"]] and isinstance(s["image"], bytes)
                assert s["image_id"] == stable_image_id(s["key"])
                seen.append(s["key"])
            total.counts.update(counter.counts)
    assert sorted(seen) == sorted(good)
    assert total.counts == {"no image in sample": 1, "no caption": 1, "empty caption": 2}
    assert stable_image_id("000011") == 11 and stable_image_id("img_a") == stable_image_id("img_a")


def test_webdataset_pairs_with_dataloader_workers(tmp_path):
    paths, good = write_shards(tmp_path)
    assert expand_shards(str(tmp_path / "shard-{000..002}.tar")) == paths
    decodable = set(good) - {"img_b"}
    keys = []
    for rank in range(2):                                   # 2 ranks x 2 workers
        ds = WebDatasetPairs(paths, image_size=8, rank=rank, world_size=2, shuffle=True, seed=3)
        ds.set_epoch(1)
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_pairs)
        for batch in loader:
            assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1:] == (8, 8, 3)
            for key, caps, image_id in zip(batch["keys"], batch["captions"], batch["image_ids"]):
                assert caps == good[key] and image_id == stable_image_id(key)
            keys += batch["keys"]
    assert sorted(keys) == sorted(decodable)
    ds = WebDatasetPairs(str(tmp_path / "*.tar"), image_size=8)       # in-process: counter visible
    assert sorted(s["key"] for s in ds) == sorted(decodable)
    assert ds.counter.counts["not an image"] == 1
    assert (os.path.join(str(tmp_path), "shard-001.tar#img_b"), "not an image") in ds.counter.examples


def test_webdataset_truncated_shard(tmp_path):
    paths, good = write_shards(tmp_path)
    with tarfile.open(paths[0]) as tar:                      # cut inside the data of 000001.jpg
        end = tar.getmember("000001.jpg").offset_data + 10
    cut = tmp_path / "cut.tar"
    cut.write_bytes(open(paths[0], "rb").read()[:end])
    counter = SkipCounter()
    keys = [s["key"] for s in iter_webdataset(str(cut), counter=counter)]
    assert keys == ["000000"] and counter.counts == {"corrupt shard": 1}   # the damaged sample is dropped
    with pytest.raises(BadSample, match="cut.tar: corrupt shard"):
        list(iter_webdataset(str(cut), strict=True))


# ---------------------------------------------------------------------------------------------------
# Pascal VOC


def test_voc_segmentation_masks_keep_indices_and_ignore(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    masks = {}
    for i, (name, cls) in enumerate([("2007_000032", 1), ("2007_000033", 15)]):
        mask = np.zeros((20, 24), np.uint8)
        mask[4:16, 5:19] = 255                              # the object's border is "ignore"
        mask[5:15, 6:18] = cls
        mask[0, 0] = 20                                     # tvmonitor in the corner
        img = Image.fromarray(mask)
        img.putpalette(voc_colormap().ravel().tolist())     # real VOC masks: palette PNGs
        img.save(voc / "SegmentationClass" / f"{name}.png")
        assert Image.open(voc / "SegmentationClass" / f"{name}.png").mode == "P"
        noise(20, 24, seed=i).save(voc / "JPEGImages" / f"{name}.jpg")
        masks[name] = mask
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000032\n2007_000033\n")
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000033\n")

    records = read_voc_segmentation(tmp_path / "VOCdevkit", "val")   # devkit root works too
    assert [(r["name"], r["image_id"]) for r in records] == [("2007_000032", 0), ("2007_000033", 1)]
    assert len(read_voc_segmentation(voc, "train")) == 1
    for r in records:
        mask = load_voc_mask(r["mask_path"])
        assert mask.dtype == np.uint8 and np.array_equal(mask, masks[r["name"]])
        assert set(np.unique(mask)) >= {0, 20, 255}
        assert load_image(r["image_path"]).shape == (20, 24, 3)
    assert VOC_CLASSES[15] == "person" and VOC_CLASSES[0] == "background" and len(VOC_CLASSES) == 21

    rgb_path = tmp_path / "rgb_mask.png"                    # a mask re-saved as RGB maps back
    Image.fromarray(voc_colormap()[masks["2007_000033"]]).save(rgb_path)
    assert np.array_equal(load_voc_mask(rgb_path), masks["2007_000033"])
    with pytest.raises(BadSample, match="missing file"):
        load_voc_mask(tmp_path / "nope.png")


def test_coco_readers_name_the_bad_entry(tmp_path):
    path = tmp_path / "bad.json"
    cases = [({"images": [{"id": 1}]}, r"bad.json: images\[0\] has no 'file_name'"),
             ({"images": [{"id": [1], "file_name": "a.png"}]}, r"images\[0\].id is \[1\]; expected an integer id"),
             ({"images": [], "annotations": [7]}, r"annotations\[0\] must be a JSON object, not int"),
             ([], "must be a COCO JSON object with a 'images' list")]
    for doc, message in cases:
        path.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=message):
            read_coco_captions(path, tmp_path)
    path.write_text(json.dumps({"images": [{"id": 1}], "categories": [{"id": 1, "name": "dog"}],
                                "annotations": [{"image_id": 1, "category_id": 9}]}))
    with pytest.raises(ValueError, match=r"annotations\[0\] has unknown category_id 9"):
        read_coco_instances(path)
    path.write_bytes(b'{"images": "\xe9"}')
    with pytest.raises(ValueError, match="bad.json is not UTF-8 text"):
        read_coco_captions(path, tmp_path)

"""Stage 1 on real-data layouts (read from local paths): COCO, Karpathy, imagefolder and streamed WebDataset
shards, each with a few bad files that must be skipped and counted, never crash the run. The runs that must
succeed run in this process (conftest's `stage1_here`); the strict run, which must stop the program, is launched."""
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from spark_vlm.data.coco_export import export_coco
from spark_vlm.data.scenes import SceneConfig

pytestmark = pytest.mark.slow  # training runs on real-data layouts

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.image_size=32", "model.patch_size=8", "model.vision_width=32", "model.vision_layers=1",
        "model.vision_heads=2", "model.text_width=32", "model.text_layers=1", "model.text_heads=2",
        "model.embed_dim=16", "model.max_text_len=24", "data.num_val=4", "data.vocab_size=200",
        "train.batch_size=4", "train.max_steps=3", "train.eval_every=0", "train.save_every=0",
        "train.precision=fp32", "optim.warmup_steps=1"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    export_coco(str(root), "train", 16, SceneConfig(image_size=32))
    export_coco(str(root), "val", 6, SceneConfig(image_size=32))
    # Damage: a corrupt image, a missing image, an empty caption.
    caps = json.loads((root / "annotations" / "captions_train.json").read_text())
    (root / "train" / caps["images"][0]["file_name"]).write_bytes(b"not an image")
    caps["images"].append({"id": 99, "file_name": "missing.png", "width": 32, "height": 32})
    caps["annotations"].append({"id": 9999, "image_id": 99, "caption": "a ghost"})
    caps["annotations"][1]["caption"] = "   "
    (root / "annotations" / "captions_train.json").write_text(json.dumps(caps))
    return root


def run(args, tmp_path):
    env = {**os.environ, "SPARK_VLM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "stage1_pretrain" / "train.py"), *TINY, *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_coco(coco, tmp_path, stage1_here):
    a = coco / "annotations"
    proc = stage1_here(TINY + ["data.kind=coco", f"data.train_path={a / 'captions_train.json'}",
                               f"data.train_images={coco / 'train'}", f"data.val_path={a / 'captions_val.json'}",
                               f"data.val_images={coco / 'val'}", f"train.output_dir={tmp_path / 'run'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the corrupt image, the missing image and the empty caption, each counted with its reason
    assert "Skipped 3 bad train samples (" in proc.stdout
    assert all(r in proc.stdout for r in ("missing file: 1", "empty caption: 1", "not an image: 1"))
    assert "R@1 = " in proc.stdout and (tmp_path / "run" / "model.safetensors").is_file()


def test_coco_strict_names_the_file(coco, tmp_path):
    a = coco / "annotations"
    proc = run(["data.kind=coco", f"data.train_path={a / 'captions_train.json'}", f"data.train_images={coco / 'train'}",
                "data.strict=true", f"train.output_dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode != 0 and ".png" in proc.stderr


def test_karpathy_and_imagefolder(coco, tmp_path, stage1_here):
    caps = json.loads((coco / "annotations" / "captions_train.json").read_text())
    by_image = {}
    for ann in caps["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    images = [{"filename": im["file_name"], "filepath": "train", "cocoid": im["id"],
               "split": "val" if i < 5 else ("restval" if i % 2 else "train"),
               "sentences": [{"raw": c} for c in by_image.get(im["id"], [])]} for i, im in enumerate(caps["images"])]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images}))
    proc = stage1_here(TINY + ["data.kind=karpathy", f"data.train_path={tmp_path / 'dataset_coco.json'}",
                               f"data.train_images={coco}", f"train.output_dir={tmp_path / 'k'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # train + restval train (images 5..15; the missing file is skipped), "val" is held out (images 0..4, one corrupt)
    assert "11 train / 4 val images" in proc.stdout and "held-out retrieval on 4 images" in proc.stdout
    assert (tmp_path / "k" / "model.safetensors").is_file()

    folder = coco / "train"
    with open(folder / "metadata.jsonl", "w") as f:
        for im in caps["images"][:14]:
            f.write(json.dumps({"file_name": im["file_name"], "text": by_image.get(im["id"], [""])[0]}) + "\n")
    proc = stage1_here(TINY + ["data.kind=imagefolder", f"data.train_path={folder}",
                               f"train.output_dir={tmp_path / 'i'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 14 listed, the corrupt first image skipped, the last data.num_val=4 held out
    assert "9 train / 4 val images" in proc.stdout and "held-out retrieval on 4 images" in proc.stdout
    assert (tmp_path / "i" / "model.safetensors").is_file()


def write_shards(coco, out: Path, split: str, shards: int):
    caps = json.loads((coco / "annotations" / f"captions_{split}.json").read_text())
    text = {}
    for ann in caps["annotations"]:
        text.setdefault(ann["image_id"], ann["caption"])
    out.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(out / f"{split}-{s:03d}.tar", "w") as tar:
            for im in caps["images"][s::shards]:
                if not (coco / split / im["file_name"]).exists():
                    continue
                for name, data in ((f"{im['id']:06d}.png", (coco / split / im["file_name"]).read_bytes()),
                                   (f"{im['id']:06d}.txt", (text.get(im["id"]) or "").encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_webdataset_streaming(coco, tmp_path, stage1_here):
    write_shards(coco, tmp_path / "wds", "train", 4)
    write_shards(coco, tmp_path / "wds", "val", 1)
    proc = stage1_here(TINY + ["data.kind=webdataset", f"data.train_path={tmp_path / 'wds'}/train-{{000..003}}.tar",
                               f"data.val_path={tmp_path / 'wds'}/val-000.tar", f"train.output_dir={tmp_path / 'w'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "streamed train" in proc.stdout
    steps = [json.loads(l)["step"] for l in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()
             if "kind" not in json.loads(l)]
    assert steps == [1, 2, 3]

"""The evaluation CLIs in eval/ end to end on tiny fixtures with a tiny random checkpoint: JSON keys and
value ranges, the markdown table, identical JSON on a repeated run, bad images skipped and counted."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spark_vlm.data import coco_export
from spark_vlm.data.readers import voc_colormap
from spark_vlm.data.scenes import SceneConfig, generate_scene
from spark_vlm.data.tokenizer import train_sentencepiece
from spark_vlm.evaluation.stage1_run import load_stage1_run
from spark_vlm.models.dual_encoder import SparkConfig, SparkModel

pytestmark = pytest.mark.slow  # trains a tiny stage-1 run, then runs every CLI end to end

REPO = Path(__file__).resolve().parents[1]


def cli(name: str):
    """Import eval/<name>.py as a module, so its main(argv) runs in this process (no torch re-import)."""
    spec = importlib.util.spec_from_file_location(f"eval_cli_{name}", REPO / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_stage1_run(root: Path, extra_captions: tuple[str, ...] = ()) -> str:
    """A tiny random stage-1 run (32 px, a 4x4 patch grid) with a SentencePiece tokenizer of 40 scenes' captions
    (and `extra_captions`), written as stage 1 writes it: root/run."""
    captions = [c for i in range(40) for c in generate_scene(SceneConfig(image_size=32), "train", i)["captions"]]
    tok = train_sentencepiece(captions + list(extra_captions), vocab_size=200, cache_dir=root / "sp")
    torch.manual_seed(0)
    config = SparkConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                         vocab_size=tok.vocab_size, max_text_len=24, text_width=32, text_layers=1, text_heads=2,
                         embed_dim=16)
    run = root / "run"
    SparkModel(config).save_pretrained(run)
    tok.save(run)
    return str(run)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_stage1_run(tmp_path_factory.mktemp("ckpt"), ("a photo of a cat", "a dog"))


def run_twice(name: str, argv: list[str], out: Path) -> dict:
    """Run a CLI twice; the JSON must be byte-identical and the markdown table must exist."""
    cli(name).main(argv + ["--out", str(out)])
    first = out.read_text()
    cli(name).main(argv + ["--out", str(out)])
    assert out.read_text() == first, f"{name}: a repeated run changed the report"
    assert out.with_suffix(".md").read_text().startswith("## ")
    return json.loads(first)


def in_range(*values):
    return all(0.0 <= v <= 100.0 for v in values)


def test_load_stage1_run_explains_a_wrong_directory(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="not a stage-1 run"):
        load_stage1_run(tmp_path)
    model, tok = load_stage1_run(checkpoint)
    assert not model.training and tok.vocab_size == model.config.vocab_size


def test_classification_cli(tmp_path, checkpoint):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["red_thing", "blue_thing", "green_thing"]):
        (tmp_path / "tree" / name).mkdir(parents=True)
        for k in range(2):
            pixels = np.zeros((20, 24, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "tree" / name / f"{k}.png")
    (tmp_path / "tree" / "red_thing" / "broken.jpg").write_bytes(b"not a jpeg")
    out = run_twice("classification", ["--checkpoint", checkpoint, "--image-dir", str(tmp_path / "tree"),
                                       "--templates", "a {}", "a photo of a {}."], tmp_path / "cls.json")
    assert out["num_samples"] == 6 and out["num_classes"] == 3 and out["class_names"][0] == "blue thing"
    assert in_range(out["acc@1"], out["acc@5"], out["mean_per_class_recall"])
    assert out["acc@5"] == 100.0  # 3 classes: all within the top 5
    assert out["chance_acc@1"] == pytest.approx(100 / 3) and out["chance_acc@5"] == 100.0
    assert out["skipped"]["total"] == 1
    assert out["template_set"] == "custom: 2 templates" and out["class_names_from"] == "folder names"
    # The default: the bundled 80 templates; a class-name file names the sorted folders.
    (tmp_path / "names.txt").write_text("navy\ncrimson\nlime\n")
    out = cli("classification").main(["--checkpoint", checkpoint, "--image-dir", str(tmp_path / "tree"),
                                      "--class-names", str(tmp_path / "names.txt"), "--out", str(tmp_path / "c.json")])
    assert out["num_templates"] == 80 and out["template_set"].startswith("imagenet80")
    assert out["class_names"] == ["navy", "crimson", "lime"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    out = tmp_path_factory.mktemp("coco")
    coco_export.main(["--out", str(out), "--split", "val", "--num-images", "8", "--image-size", "32"])
    os.remove(next((out / "val").iterdir()))  # one missing image: skipped and counted
    return out


def test_retrieval_and_kprecision_on_coco_export(tmp_path, coco, checkpoint):
    data = ["--checkpoint", checkpoint, "--annotations", str(coco / "annotations" / "captions_val.json"),
            "--image-dir", str(coco / "val")]
    out = run_twice("retrieval", data, tmp_path / "retr.json")
    assert out["num_images"] == 7 and out["num_texts"] == 35 and out["skipped"]["total"] == 1
    for key in ("image_to_text_R@1", "text_to_image_R@10", "R@5"):
        assert in_range(out[key], out["dedup"][key])
    assert out["dedup"]["image_to_text_R@1"] >= out["image_to_text_R@1"]  # duplicates can only help
    kp = run_twice("kprecision", data, tmp_path / "kp.json")
    assert in_range(kp["K-P"], kp["K-Pna"]) and kp["num_images"] == 7


def test_retrieval_on_scenes_per_caption_kind_with_ceilings(tmp_path, checkpoint):
    out = run_twice("retrieval", ["--checkpoint", checkpoint, "--num-images", "20"], tmp_path / "retr_scenes.json")
    by_kind = out["by_kind"]
    assert set(by_kind) <= {"enumeration", "count", "relation", "partial", "colour", "size", "all"}
    assert {"enumeration", "count", "all"} <= set(by_kind) and by_kind["all"]["num_texts"] == out["num_texts"] == 100
    assert sum(r["num_texts"] for k, r in by_kind.items() if k != "all") == 100
    assert by_kind["all"]["R@1"] == pytest.approx(out["text_to_image_R@1"])  # the same standard number
    for r in by_kind.values():
        assert in_range(r["R@1"], r["R@1_ceiling"], r["truth_R@1"], r["truth_R@1_chance"])
        assert r["R@1"] <= r["truth_R@1"] and r["truth_R@1_ceiling"] == 100.0
    assert by_kind["enumeration"]["R@1_ceiling"] > by_kind["count"]["R@1_ceiling"]
    table = (tmp_path / "retr_scenes.md").read_text()
    assert "truth-aware t→i R@1" in table and "standard, enumeration captions" in table


def test_probes_cli_on_scenes_and_coco_export(tmp_path, coco, checkpoint):
    out = run_twice("probes", ["--checkpoint", checkpoint, "--num-images", "40"], tmp_path / "probes.json")
    assert set(out["per_type"]) == {"count", "color_binding", "relation_swap", "absent_object"}
    for v in out["per_type"].values():  # every score beside chance and its text-only controls
        assert in_range(v["accuracy"], v["blank_image"]) and v["chance"] == 50.0
        assert v["shorter_wins"] == v["smaller_number_wins"] == 50.0
    assert in_range(out["blank_image_mean_accuracy"])
    assert sum(v["num_items"] for v in out["per_type"].values()) + sum(out["skipped_probes"].values()) == 40 * 4
    out = run_twice("probes", ["--checkpoint", checkpoint, "--instances", str(coco / "annotations" / "instances_val.json"),
                               "--image-dir", str(coco / "val")], tmp_path / "probes_coco.json")
    assert out["num_images"] == 7 and out["skipped"]["total"] == 1 and "color_binding" in out["per_type"]


def write_voc(root: Path) -> None:
    """3 images (40x30, not square) with palette masks: classes {1, 15} + ignore, {2}, background only."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    names = ["2007_000001", "2007_000002", "2007_000003"]
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(names) + "\n")
    rng = np.random.default_rng(1)
    masks = [np.zeros((30, 40), np.uint8) for _ in names]
    masks[0][5:15, 8:20], masks[0][15:25, 20:35], masks[0][14, :] = 1, 15, 255
    masks[1][10:20, 10:30] = 2
    for name, mask in zip(names, masks):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        png = Image.fromarray(mask, mode="P")
        png.putpalette(voc_colormap().flatten().tolist())
        png.save(root / "SegmentationClass" / f"{name}.png")


def test_segmentation_cli_on_voc_and_scenes(tmp_path, checkpoint):
    write_voc(tmp_path / "voc")
    out = run_twice("segmentation", ["--checkpoint", checkpoint, "--voc-root", str(tmp_path / "voc")],
                    tmp_path / "seg.json")
    paper, standard = out["paper_protocol"], out["standard_protocol"]
    assert out["num_images"] == 3 and paper["num_images_without_foreground"] == 1
    assert paper["num_images"] == 2 and paper["num_images_multiclass"] == 1
    assert in_range(paper["mIoU"], paper["mIoU_multiclass"], standard["mIoU"])
    # Image 2 has one class: the argmax over the present classes labels it everywhere and background pixels are
    # ignored, so its IoU is 100.
    assert paper["per_class_IoU"]["bicycle"] == pytest.approx(100.0)
    assert paper["per_class_IoU"]["cat"] is None and len(paper["per_class_IoU"]) == 20
    assert len(standard["per_class_IoU"]) == 21 and standard["per_class_IoU"]["background"] is not None
    assert "background" in standard["protocol"] and out["template_set"].startswith("clip7")

    out = run_twice("segmentation", ["--checkpoint", checkpoint, "--num-images", "10"], tmp_path / "seg_scenes.json")
    assert out["num_images"] == 10 and set(out["paper_protocol"]["per_class_IoU"]) == {
        "circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring"}
    assert in_range(out["paper_protocol"]["mIoU"], out["paper_protocol"]["mIoU_multiclass"],
                    out["standard_protocol"]["mIoU"])


def test_visualize_writes_png(tmp_path, checkpoint):
    image = tmp_path / "img.png"
    Image.fromarray(generate_scene(SceneConfig(image_size=48), "test", 0)["image"]).save(image)
    cli("visualize").main(["--checkpoint", checkpoint, "--image", str(image), "--caption", "two red circles",
                           "--out", str(tmp_path / "a.png")])
    with Image.open(tmp_path / "a.png") as png:
        png.verify()
    cli("visualize").main(["--checkpoint", checkpoint, "--scene-index", "3", "--out", str(tmp_path / "b.png")])
    assert Image.open(tmp_path / "b.png").format == "PNG"


def test_retrieval_script_runs_as_a_program(tmp_path, checkpoint):
    """One real `python eval/retrieval.py` (built-in scenes), and a clear error for a wrong checkpoint."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "eval" / "retrieval.py"), "--num-images", "16", "--out", str(tmp_path / "r.json")]
    proc = subprocess.run(cmd + ["--checkpoint", checkpoint], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| protocol |" in proc.stdout and json.loads((tmp_path / "r.json").read_text())["num_images"] == 16
    proc = subprocess.run(cmd + ["--checkpoint", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "error: " in proc.stderr and "not a stage-1 run" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_input_is_one_error_line_with_exit_code_2(tmp_path, checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("classification").main(["--checkpoint", checkpoint, "--image-dir", str(tmp_path), "--templates", "a cat",
                                    "--out", str(tmp_path / "cls.json")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: template 'a cat' needs exactly one {} for the class name "
                                       "(or name one bundled set: imagenet80, clip7)\n")


def test_a_filip_run_is_ranked_by_its_late_interaction(tmp_path, checkpoint):
    """FILIP never trains the global embeddings, so its retrieval ranks by FILIP's own two similarities (image ->
    text for i->t, text -> image for t->i); any other run by the global cosine."""
    import shutil

    import numpy as np

    from spark_vlm.evaluation.data import CaptionData, load_caption_data
    from spark_vlm.evaluation.retrieval import retrieval_report
    from spark_vlm.evaluation.stage1_run import filip_retrieval_similarity, load_stage1_run
    from spark_vlm.metrics.retrieval import retrieval_recall
    filip = tmp_path / "filip"
    shutil.copytree(checkpoint, filip)
    (filip / "config.yaml").write_text("loss: filip\n")
    source = CaptionData(num_images=12)
    result = retrieval_report(str(filip), source).result
    assert result["similarity"] == "late interaction (FILIP)"
    model, tokenizer = load_stage1_run(filip)
    images, captions, *_ = load_caption_data(source, model.config.image_size)
    texts = [c for caps in captions for c in caps]
    i2t, t2i = filip_retrieval_similarity(model, tokenizer, images, texts)
    own = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
    assert result["image_to_text_R@5"] == retrieval_recall(i2t, own)["image_to_text_R@5"]
    assert result["text_to_image_R@5"] == retrieval_recall(t2i, own)["text_to_image_R@5"]
    assert retrieval_report(checkpoint, source).result["similarity"] == "global embeddings (cosine)"


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_a_clear_error_not_an_empty_result(batch_size):
    """range(0, n, -1) is empty: without the check, SugarCrepe indexed an empty embedding array (IndexError, found
    by test_cli_fuzz with --batch-size -1). Every stage-1 evaluation batches through these two functions."""
    from spark_vlm.evaluation.stage1_run import image_embeddings, text_embeddings

    with pytest.raises(ValueError, match=f"--batch-size must be >= 1, got {batch_size}"):
        image_embeddings(None, np.zeros((2, 8, 8, 3), np.uint8), batch_size)
    with pytest.raises(ValueError, match=f"--batch-size must be >= 1, got {batch_size}"):
        text_embeddings(None, None, ["a red bus"], batch_size)


def test_stage2_evaluations_refuse_a_batch_size_below_one_before_loading_anything(tmp_path):
    from spark_vlm.evaluation.captioner import caption_images
    from spark_vlm.evaluation.pope import pope_report

    with pytest.raises(ValueError, match="--batch-size must be >= 1, got 0"):
        caption_images(None, None, np.zeros((2, 8, 8, 3), np.uint8), batch_size=0)
    with pytest.raises(ValueError, match="--batch-size must be >= 1, got -1"):  # the checkpoint is never read
        pope_report(tmp_path / "no_such_run", str(tmp_path), instances="x.json", batch_size=-1)

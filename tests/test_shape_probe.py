"""The shape probe (eval/shape_probe.py): the linear probe on cases where the answer is known, the per-object
read-out on hand-built feature maps, and the CLI end to end on a tiny random checkpoint."""
import math
from pathlib import Path

import numpy as np
import pytest

from spark_vlm.data.scene_vocab import COLORS, SHAPES
from spark_vlm.evaluation.shape_probe import fit_linear_probe, object_rows, probe_scores, raw_patches

REPO = Path(__file__).resolve().parents[1]


def test_linear_probe_reads_a_linear_code_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    code = np.eye(4)[y] + 0.1 * rng.standard_normal((400, 4))
    x = np.concatenate([code, rng.standard_normal((400, 6))], axis=1)
    predict = fit_linear_probe(x[:300], y[:300], 4)
    assert (predict(x[300:]) == y[300:]).mean() == 1.0
    noise = rng.standard_normal((400, 10))
    assert (fit_linear_probe(noise[:300], y[:300], 4)(noise[300:]) == y[300:]).mean() < 0.45


def _scene(objects):
    """A 16x16 scene of 2x2 patches of 8 px; objects: (shape, colour, patch row, patch col)."""
    out = []
    for shape, colour, r, c in objects:
        mask = np.zeros((16, 16), bool)
        mask[8 * r: 8 * r + 8, 8 * c: 8 * c + 5] = True  # 5 of 8 columns: more than half of the patch
        out.append({"shape": shape, "color": colour, "mask": mask})
    return {"objects": out}


def _features(scene):
    """[P=4, 16]: each patch carries the one-hot shape (8) and colour (8) of the object covering it."""
    f = np.zeros((4, 16))
    for o in scene["objects"]:
        cover = o["mask"].reshape(2, 8, 2, 8).mean((1, 3)).reshape(-1) >= 0.5
        f[cover, SHAPES.index(o["shape"])] = 1
        f[cover, 8 + list(COLORS).index(o["color"])] = 1
    return f


def test_object_rows_average_the_patches_each_object_covers():
    scene = _scene([("star", "red", 0, 1), ("ring", "blue", 1, 0)])
    obj_x, shape_y, colour_y, img_x, present = object_rows(_features(scene)[None], [scene], patch=8)
    assert shape_y.tolist() == [SHAPES.index("star"), SHAPES.index("ring")]
    assert colour_y.tolist() == [list(COLORS).index("red"), list(COLORS).index("blue")]
    assert obj_x[0, SHAPES.index("star")] == 1 and obj_x[0, SHAPES.index("ring")] == 0
    assert present[0].sum() == 2 and present[0, SHAPES.index("star")] == 1
    np.testing.assert_allclose(img_x[0], _features(scene).mean(0))


def test_features_that_encode_shape_score_perfectly_and_blind_ones_score_chance():
    rng = np.random.default_rng(0)
    colours = list(COLORS)
    scenes = [_scene([(SHAPES[rng.integers(8)], colours[rng.integers(8)], r, c)
                      for r, c in [(0, 0), (1, 1)]]) for _ in range(300)]
    seeing = np.stack([_features(s) for s in scenes])
    scores = probe_scores(seeing[:200], scenes[:200], seeing[200:], scenes[200:], patch=8)
    assert scores["object_shape"] == 100.0 and scores["object_colour"] == 100.0
    assert scores["image_shape_presence"] > 95.0
    colour_only = seeing.copy()
    colour_only[..., :8] = 0  # sees colour, not shape: the backbones' failure this probe was written to show
    scores = probe_scores(colour_only[:200], scenes[:200], colour_only[200:], scenes[200:], patch=8)
    assert scores["object_colour"] == 100.0 and scores["object_shape"] < 25.0


def test_raw_patches_are_row_major_like_the_vit():
    images = np.zeros((1, 16, 16, 3), np.uint8)
    images[0, 0:8, 8:16] = 255  # top-right patch
    patches = raw_patches(images, 8)
    assert patches.shape == (1, 4, 192)
    assert patches[0].max(1).tolist() == [0.0, 1.0, 0.0, 0.0]


@pytest.mark.slow  # builds a tiny checkpoint and runs the CLI
def test_shape_swap_accuracy_pairs_each_caption_with_its_own_image(monkeypatch):
    """An encoder whose image embedding is the sum of its scene's caption vectors prefers every true caption to its
    shape-swapped twin (100%); a blind one scores the same with the scene as with the grey image."""
    import torch

    from spark_vlm.evaluation import shape_probe
    from spark_vlm.evaluation.data import builtin_scenes, scene_images

    scenes = builtin_scenes("test", 20, 64)
    images = scene_images(scenes, 64)
    vectors = {}

    def text_vector(text):  # a fixed random unit vector per distinct text
        if text not in vectors:
            vectors[text] = torch.nn.functional.normalize(torch.randn(256, generator=torch.Generator().manual_seed(
                len(vectors))), dim=0)
        return vectors[text]

    index = {im.tobytes(): i for i, im in enumerate(images)}

    def seeing(model, ims, batch_size):
        return torch.stack([sum(text_vector(c) for c in scenes[index[im.tobytes()]]["captions"])
                            if im.tobytes() in index else torch.ones(256) for im in ims])

    monkeypatch.setattr(shape_probe, "text_embeddings", lambda m, t, texts: torch.stack([text_vector(x) for x in texts]))
    monkeypatch.setattr(shape_probe, "image_embeddings", seeing)
    sees = shape_probe.shape_swap_accuracy(None, None, scenes, images, 8)
    assert sees["scene"] == 100.0 and sees["pairs"] > 20 and sees["blank_image"] < 90
    monkeypatch.setattr(shape_probe, "image_embeddings", lambda m, ims, b: torch.ones(len(ims), 256))
    blind = shape_probe.shape_swap_accuracy(None, None, scenes, images, 8)
    assert blind["scene"] == blind["blank_image"] and blind["pairs"] == sees["pairs"]


def test_cli_reports_model_beside_its_controls(tmp_path):
    from test_eval_cli import cli, tiny_stage1_run

    probe = cli("shape_probe")
    run = tiny_stage1_run(tmp_path)
    out = tmp_path / "probe.json"
    args = ["--checkpoint", str(run), "--num-train", "60", "--num-test", "20", "--out", str(out)]
    result = probe.main(args)
    first = out.read_text()
    assert probe.main(args) == result and out.read_text() == first  # deterministic
    for name in ("model", "random_init", "raw_pixels"):
        assert 0 <= result[name]["object_shape"] <= 100 and result[name]["objects"] > 20
    assert result["raw_pixels"]["object_colour"] > 60  # colour is in the pixels: the probe can read it
    for name in ("model", "random_init", "model_blank_image"):
        assert 0 <= result[name]["caption_vs_shape_swap"] <= 100
    assert result["shape_swap_pairs"] > 0 and "caption_vs_shape_swap" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2


@pytest.mark.slow  # trains a tiny vision tower for a few steps
@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_supervised_upper_bound_script_trains_and_probes(tmp_path, stem):
    import importlib.util

    from test_eval_cli import tiny_stage1_run

    spec = importlib.util.spec_from_file_location("shape_upper_bound", REPO / "benchmarks" / "shape_upper_bound.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run = tiny_stage1_run(tmp_path)
    saved = tmp_path / "supervised"
    result = script.main(["--architecture", str(run), "--stem", stem, "--steps", "3", "--batch-size", "4",
                          "--num-train", "16", "--probe-train", "60", "--probe-test", "20",
                          "--out", str(tmp_path / "bound.json"), "--save", str(saved)])
    assert result["stem"] == stem and len(result["losses_every_50"]) == 2
    assert 0 <= result["probe"]["object_shape"] <= 100 and result["probe"]["objects"] > 20
    # --save writes a stage-1 run directory with the trained tower (stage 2's vision_checkpoint= can read it)
    from spark_vlm.data.tokenizer import CaptionTokenizer
    from spark_vlm.models import SparkModel

    import torch

    trained = SparkModel.from_pretrained(saved)
    torch.manual_seed(0)  # the script's seed: the same initial weights
    initial = SparkModel(trained.config)
    assert trained.config.vision_stem == stem and CaptionTokenizer.load(saved) is not None
    changed = [name for name, w in trained.vision_model.state_dict().items()
               if not torch.equal(w, initial.vision_model.state_dict()[name])]
    assert changed and all(torch.equal(w, initial.text_model.state_dict()[name])
                           for name, w in trained.text_model.state_dict().items())


def _benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_a_shape_twin_renames_every_shape_and_mostly_keeps_the_rest_of_the_scene():
    """Each draw of shape i becomes another shape, so a twin whose draws all fit where the original's did has the
    same colours, sizes and background and none of its shapes; a renamed shape that does not fit changes the later
    draws (about 15% of twins, 300 scenes measured), so most, not all, twins differ in shape alone."""
    import spark_vlm.data.scenes as scenes

    twins = _benchmark("shape_twins")
    config = scenes.SceneConfig(image_size=64)
    exact = 0
    for index in range(40):
        scene, twin = scenes.generate_scene(config, "train", index), twins.twin_scene(config, index)
        assert twin["background"] == scene["background"] and twin["captions"] != scene["captions"]
        exact += ([(o["color"], o["size"]) for o in scene["objects"]]
                  == [(o["color"], o["size"]) for o in twin["objects"]]
                  and all(a["shape"] != b["shape"] for a, b in zip(scene["objects"], twin["objects"])))
    assert 24 <= exact < 40  # 27 of these 40
    assert scenes.SHAPES == SHAPES  # the renaming is undone after each render


@pytest.mark.slow  # trains a tiny dual encoder for a few steps
def test_shape_twins_script_trains_on_scenes_and_their_twins(tmp_path):
    from test_eval_cli import tiny_stage1_run

    from spark_vlm.models import SparkModel

    run = tiny_stage1_run(tmp_path)
    out = tmp_path / "twins"
    result = _benchmark("shape_twins").main(["--architecture", str(run), "--mode", "twins", "--steps", "3",
                                             "--batch-size", "4", "--num-train", "16", "--out", str(out)])
    assert result["mode"] == "twins" and [r["step"] for r in result["log"]] == [0, 2]
    assert all(math.isfinite(r["loss"]) for r in result["log"])
    assert SparkModel.from_pretrained(out).config.vision_stem == "patch"

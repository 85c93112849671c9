"""Malformed input to the evaluation CLIs (hypothesis): every run either succeeds or exits with code 2 and exactly
one `error: ...` line, never a traceback. Inputs: arbitrary JSON, valid COCO files with random keys deleted or
values replaced, and raw bytes (invalid JSON, non-UTF-8)."""
import contextlib
import copy
import functools
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
KEYS = ["images", "annotations", "categories", "id", "image_id", "caption", "category_id", "name", "file_name",
        "image", "text", "label"]
SCALARS = st.none() | st.booleans() | st.integers(-2, 3) | st.floats(allow_nan=False) | st.text(max_size=4)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=4), max_leaves=8)

CAPTIONS = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "annotations": [{"id": 1, "image_id": 1, "caption": "a dog on a couch"},
                            {"id": 2, "image_id": 2, "caption": "a red bus"}]}
INSTANCES = {"images": CAPTIONS["images"],
             "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "couch"}, {"id": 3, "name": "bus"},
                            {"id": 4, "name": "cat"}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 1}, {"id": 2, "image_id": 1, "category_id": 2},
                             {"id": 3, "image_id": 1, "category_id": 4}, {"id": 4, "image_id": 2, "category_id": 3}]}
RESULTS = [{"image_id": 1, "caption": "a dog and a cat"}, {"image_id": 2, "caption": "a bus"}]
SYNONYMS = {"dog": ["dog", "puppy"], "bus": ["bus"]}


def _slots(node):
    """Every (container, key) inside a JSON value."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in list(items):
        yield node, key
        yield from _slots(child)


@st.composite
def mutated(draw, valid):
    """`valid` with 1-3 random slots deleted or replaced by arbitrary JSON."""
    doc = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(doc))
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        if isinstance(container, dict) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(JSON)
    return doc


def content(valid):
    """File bytes: a mutated valid document, arbitrary JSON, or raw bytes."""
    return st.one_of(mutated(valid).map(lambda d: json.dumps(d).encode()), JSON.map(lambda d: json.dumps(d).encode()),
                     st.binary(max_size=12), st.just(b'{"images": "\xe9"}'))


@functools.cache
def cli(name: str):
    spec = importlib.util.spec_from_file_location(f"fuzz_cli_{name}", REPO / "eval" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def succeeds_or_one_error_line(module, argv: list[str]) -> None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            module.main(argv)
    except SystemExit as e:
        text = err.getvalue()
        lines = [line for line in text.splitlines() if line.strip()]
        assert e.code == 2, text
        assert lines and lines[-1].startswith("error: "), text  # progress bars may come before it
        assert sum(line.startswith("error: ") for line in lines) == 1 and "Traceback" not in text, text


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "images").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / name)
    for name, doc in [("captions", CAPTIONS), ("instances", INSTANCES), ("results", RESULTS), ("synonyms", SYNONYMS)]:
        (root / f"{name}.json").write_text(json.dumps(doc))
    return root


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(which=st.sampled_from(["results", "captions", "instances", "synonyms"]), data=st.data())
def test_hallucination_cli(files, which, data):
    valid = {"results": RESULTS, "captions": CAPTIONS, "instances": INSTANCES, "synonyms": SYNONYMS}[which]
    bad = files / f"bad_{which}.json"
    bad.write_bytes(data.draw(content(valid)))
    paths = {k: str(files / f"{k}.json") for k in ("results", "captions", "instances", "synonyms")}
    paths[which] = str(bad)
    argv = ["--results", paths["results"], "--captions", paths["captions"], "--out", str(files / "out.json")]
    argv += ["--synonyms", paths["synonyms"]] if which == "synonyms" else ["--instances", paths["instances"]]
    succeeds_or_one_error_line(cli("hallucination"), argv + data.draw(st.sampled_from([[], ["--reference-exact"]])))


@FUZZ
@given(which=st.sampled_from(["results", "captions"]), data=st.data())
def test_captioning_cli_without_java(files, which, data, monkeypatch):
    monkeypatch.setenv("PATH", "")  # a valid pair ends in the "java is not on PATH" line instead of a Java run
    bad = files / f"bad_{which}.json"
    bad.write_bytes(data.draw(content(RESULTS if which == "results" else CAPTIONS)))
    paths = {k: str(files / f"{k}.json") for k in ("results", "captions")}
    paths[which] = str(bad)
    succeeds_or_one_error_line(cli("captioning"), ["--results", paths["results"], "--annotations", paths["captions"],
                                                   "--out", str(files / "out.json")])


POPE_LINES = [{"question_id": 1, "image": "a.png", "text": "Is there a dog in the image?", "label": "yes"},
              {"question_id": 2, "image": "b.png", "text": "Is there a cat in the image?", "label": "no"}]


@FUZZ
@given(data=st.data())
def test_pope_cli(files, data):
    """Questions or instances fuzzed, and the numeric options; the checkpoint is no stage-2 run, so a valid input
    ends in that error line."""
    bad = files / "bad_pope.json"
    if data.draw(st.booleans()):
        lines = data.draw(st.lists(mutated(POPE_LINES[0]) | st.sampled_from(POPE_LINES) | JSON, min_size=0, max_size=3))
        bad.write_text("\n".join(json.dumps(line) for line in lines))
        source = ["--questions", str(bad)]
    else:
        bad.write_bytes(data.draw(content(INSTANCES)))
        source = ["--instances", str(bad)]
    options = ["--num-images", str(data.draw(st.integers(-1, 3))), "--shots", str(data.draw(st.integers(-1, 2)))]
    succeeds_or_one_error_line(cli("pope"), ["--checkpoint", str(files), "--image-dir", str(files / "images"),
                                             "--out", str(files / "out.json")] + source + options)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory):
    from spark_vlm.data.tokenizer import train_sentencepiece
    from spark_vlm.models.dual_encoder import SparkConfig, SparkModel

    root = tmp_path_factory.mktemp("stage1")
    tok = train_sentencepiece(["a dog on a couch", "a red bus", "a cat"] * 20, vocab_size=40, cache_dir=root / "sp")
    SparkModel(SparkConfig(image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
                           vocab_size=tok.vocab_size, max_text_len=12, text_width=16, text_layers=1, text_heads=2,
                           embed_dim=8)).save_pretrained(root / "run")
    tok.save(root / "run")
    return str(root / "run")


@pytest.mark.slow  # loads a stage-1 run per example
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["retrieval", "kprecision"]), data=st.data())
def test_stage1_caption_clis(files, stage1_run, name, data):
    (files / "bad_captions.json").write_bytes(data.draw(content(CAPTIONS)))
    succeeds_or_one_error_line(cli(name), ["--checkpoint", stage1_run, "--annotations", str(files / "bad_captions.json"),
                                           "--image-dir", str(files / "images"), "--out", str(files / "out.json")]
                               + data.draw(st.sampled_from([[], ["--strict"]])))


NAMES = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1,
                max_size=5).filter(lambda s: s not in (".", ".."))
# Values that start with "-" are options to argparse (its own usage error), not templates: left out.
TEMPLATES = st.lists(st.sampled_from(["a {}", "{}", "{} {}", "imagenet80", "clip7", "{0}", "{x}", "{", "}", ""])
                     | st.text(max_size=6).filter(lambda t: not t.startswith("-")), min_size=1, max_size=3)


def image_bytes(draw) -> bytes:
    """A valid PNG (odd sizes included), or bytes that are not one."""
    if draw(st.booleans()):
        buf = io.BytesIO()
        size = (draw(st.integers(1, 20)), draw(st.integers(1, 20)))
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(buf, format="PNG")
        return buf.getvalue()
    return draw(st.binary(max_size=16))


def fresh_dir(files, name: str) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=name, dir=files))


@pytest.mark.slow  # loads a stage-1 run per example
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_classification_cli(files, stage1_run, data):
    """A class tree of fuzzed folder names and image bytes, a fuzzed class-name file, templates and batch size."""
    tree = fresh_dir(files, "cls")
    for name in data.draw(st.lists(NAMES, max_size=3, unique_by=str.lower)):
        (tree / name).mkdir(exist_ok=True)
        for k in range(data.draw(st.integers(0, 2))):
            (tree / name / f"{k}.png").write_bytes(image_bytes(data.draw))
    argv = ["--checkpoint", stage1_run, "--image-dir", str(tree), "--out", str(files / "out.json"),
            "--templates", *data.draw(TEMPLATES), "--batch-size", str(data.draw(st.integers(-1, 3)))]
    if data.draw(st.booleans()):
        names = data.draw(st.binary(max_size=12) | st.text(max_size=20).map(str.encode))
        (tree.parent / "names.txt").write_bytes(names)
        argv += ["--class-names", str(tree.parent / "names.txt")]
    succeeds_or_one_error_line(cli("classification"), argv + data.draw(st.sampled_from([[], ["--strict"]])))


@pytest.mark.slow  # loads a stage-1 run per example
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_segmentation_cli(files, stage1_run, data):
    """A VOC layout with a fuzzed split list, images and masks (valid palette PNGs, other PNGs, junk), class names."""
    root = fresh_dir(files, "voc")
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    names = data.draw(st.lists(st.sampled_from(["a", "b", "c", "../x", " ", "é"]), max_size=3))
    split = data.draw(st.sampled_from(["val", "train"]))
    listing = "\n".join(names).encode() if data.draw(st.booleans()) else data.draw(st.binary(max_size=8))
    (root / "ImageSets/Segmentation" / f"{split}.txt").write_bytes(listing)
    for name in {"a", "b"}:
        if data.draw(st.booleans()):
            (root / "JPEGImages" / f"{name}.jpg").write_bytes(image_bytes(data.draw))
        if data.draw(st.booleans()):
            mask = np.asarray(data.draw(st.lists(st.sampled_from([0, 1, 2, 255, 40]), min_size=12, max_size=12)),
                              np.uint8).reshape(3, 4)
            png = Image.fromarray(mask, mode="P")
            png.putpalette([v for i in range(256) for v in (i, i, i)])
            png.save(root / "SegmentationClass" / f"{name}.png")
    argv = ["--checkpoint", stage1_run, "--voc-root", str(root), "--split", "val", "--out", str(files / "out.json"),
            "--num-images", str(data.draw(st.integers(-1, 3))), "--batch-size", str(data.draw(st.integers(-1, 3)))]
    if data.draw(st.booleans()):
        # "--flag=value": a value starting with "-" is then a value, as a user would have to write it
        argv += ["--class-names=" + data.draw(st.sampled_from(["", ",", "cat", "cat,,dog", "a,b,c"])
                                              | st.text(max_size=6))]
    if data.draw(st.booleans()):
        argv += ["--templates", *data.draw(TEMPLATES)]
    succeeds_or_one_error_line(cli("segmentation"), argv + data.draw(st.sampled_from([[], ["--strict"]])))


@pytest.mark.slow  # loads a stage-1 run per example
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_visualize_cli(files, stage1_run, data):
    if data.draw(st.booleans()):
        image = fresh_dir(files, "vis") / "x.png"
        image.write_bytes(image_bytes(data.draw))
        source = ["--image", str(image), "--caption=" + data.draw(st.text(max_size=12))]  # argparse: both or neither
    else:
        source = ["--scene-index", str(data.draw(st.integers(-2, 3) | st.integers(10**9, 10**12)))]
        source += data.draw(st.sampled_from([[], ["--caption=" + data.draw(st.text(max_size=12))]]))
    succeeds_or_one_error_line(cli("visualize"), ["--checkpoint", stage1_run, "--out", str(files / "vis.png")]
                               + source)


@FUZZ
@given(data=st.data())
def test_caption_cli(files, data):
    """Annotations / few-shot source fuzzed, and the numeric options; the checkpoint is no stage-2 run, so a valid
    input ends in that error line."""
    bad = files / "bad_caption_annotations.json"
    bad.write_bytes(data.draw(content(CAPTIONS)))
    argv = ["--checkpoint", str(files), "--image-dir", str(files / "images"), "--out", str(files / "caps.json"),
            "--annotations", str(bad if data.draw(st.booleans()) else files / "captions.json")]
    for flag in ("--shots", "--limit", "--batch-size", "--max-new-tokens", "--num-beams"):
        if data.draw(st.booleans()):
            argv += [flag, str(data.draw(st.integers(-1, 3)))]
    if data.draw(st.booleans()):
        argv += ["--shots-from", str(bad)]
    succeeds_or_one_error_line(cli("caption"), argv)


SUGARCREPE = {"0": {"filename": "a.png", "caption": "a dog on a couch", "negative_caption": "a couch on a dog"},
              "1": {"filename": "b.png", "caption": "a red bus", "negative_caption": "a blue bus"}}
MMVP_CSV = "Question ID,Type,Statement\n1,color,a red bus\n2,color,a blue bus\n"


@pytest.mark.slow  # loads a stage-1 run per example
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["sugarcrepe", "mmvp", "probes", "grounding"]), data=st.data())
def test_other_stage1_clis(files, stage1_run, name, data):
    """SugarCrepe's per-type JSON, MMVP's Questions.csv (text, bytes, rows with missing images), the probes'
    COCO files, and the numeric options of the scene-only grounding."""
    out = ["--checkpoint", stage1_run, "--out", str(files / f"{name}.json")]
    batch = ["--batch-size", str(data.draw(st.integers(-1, 3)))]
    if name == "sugarcrepe":
        root = fresh_dir(files, "sc")
        root.joinpath(data.draw(st.sampled_from(["add_obj.json", "swap_att.json", "other.json"]))).write_bytes(
            data.draw(content(SUGARCREPE)))
        argv = out + batch + ["--data-dir", str(root), "--image-dir", str(files / "images")]
    elif name == "mmvp":
        root = fresh_dir(files, "mmvp")
        (root / "MLLM_VLM Images" / "color").mkdir(parents=True)
        for qid in data.draw(st.lists(st.sampled_from(["1", "2"]), max_size=2)):
            (root / "MLLM_VLM Images" / "color" / f"{qid}.jpg").write_bytes(image_bytes(data.draw))
        csv = data.draw(st.just(MMVP_CSV) | st.text(max_size=30) | st.sampled_from(
            [MMVP_CSV + "3,color,odd one out\n", MMVP_CSV.replace("Type", "Kind"), "Question ID,Type,Statement\n"]))
        raw = csv.encode() if data.draw(st.booleans()) else data.draw(st.binary(max_size=9))
        (root / "Questions.csv").write_bytes(raw)
        argv = out + batch + ["--data-dir", str(root)]
    elif name == "probes":
        bad = files / "bad_probes.json"
        which = data.draw(st.sampled_from(["--instances", "--annotations"]))
        bad.write_bytes(data.draw(content(INSTANCES if which == "--instances" else CAPTIONS)))
        paths = {"--instances": str(files / "instances.json"), "--annotations": str(files / "captions.json"),
                 which: str(bad)}
        argv = out + batch + [k for pair in paths.items() for k in pair]
        argv += ["--image-dir", str(files / "images"), "--num-images", str(data.draw(st.integers(-1, 3)))]
    else:
        return succeeds_or_one_error_line(cli(name), out + batch + ["--num-images", str(data.draw(st.integers(-1, 3)))])
    succeeds_or_one_error_line(cli(name), argv + data.draw(st.sampled_from([[], ["--strict"]])))

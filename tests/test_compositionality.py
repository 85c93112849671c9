"""SugarCrepe and MMVP-VLM: the strict scores by hand, the loaders on tiny fixtures in the real formats (and their
one-line errors), and the CLIs against a per-item loop with a tiny random checkpoint."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_cli import checkpoint, cli  # noqa: F401  (the module-scoped tiny stage-1 run)

from spark_vlm.data.images import load_image, to_pixel_values
from spark_vlm.evaluation.mmvp import IMAGE_FOLDER, read_mmvp
from spark_vlm.evaluation.stage1_run import load_stage1_run
from spark_vlm.evaluation.sugarcrepe import read_sugarcrepe
from spark_vlm.metrics.compositionality import grouped_percent, mmvp_pair_correct, shorter_caption_wins, strict_wins


# ------------------------------------------------------------------------------------------ scores by hand
def test_strict_scores_count_ties_as_wrong():
    assert strict_wins([0.5, 0.2, 0.3], [0.1, 0.2, 0.4]).tolist() == [True, False, False]
    assert shorter_caption_wins(["a red cat", "a cat", "two dogs"], ["a cat", "a red cat", "one dog"]).tolist() == [
        False, True, False]
    sims = np.array([[[0.9, 0.1], [0.2, 0.8]],    # each text prefers its own image: right
                     [[0.9, 0.1], [0.9, 0.8]],    # text 2 prefers image 1: wrong
                     [[0.5, 0.5], [0.2, 0.8]],    # text 1 ties: wrong (the reference would call it image 2)
                     [[0.3, 0.3], [0.3, 0.3]]])   # a model blind to the image: wrong
    assert mmvp_pair_correct(sims).tolist() == [True, False, False, False]
    per, mean = grouped_percent([True, False, True, True], ["b", "b", "a", "a"])
    assert list(per) == ["b", "a"] and per == {"b": 50.0, "a": 100.0} and mean == 75.0
    with pytest.raises(ValueError):
        mmvp_pair_correct(np.zeros((2, 2)))


# ------------------------------------------------------------------------------------------ fixtures
def save_image(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(path, format="JPEG")


def write_sugarcrepe(root):
    """Two types in the benchmark's format; image 3 is missing (its item is skipped)."""
    (root / "data").mkdir(parents=True)
    for i in range(3):
        save_image(root / "val2017" / f"00000000000{i}.jpg", i)
    files = {"swap_att": {"0": ["000000000000.jpg", "a red circle and a blue square", "a blue circle and a red square"],
                          "1": ["000000000001.jpg", "a green star", "a star green"]},
             "add_obj": {"0": ["000000000002.jpg", "a cat", "a cat and a dog"],
                         "1": ["000000000001.jpg", "two dogs", "two dogs and a ring"],
                         "2": ["000000000003.jpg", "a ring", "a ring and a box"]}}
    for kind, entries in files.items():
        (root / "data" / f"{kind}.json").write_text(json.dumps(
            {k: dict(zip(("filename", "caption", "negative_caption"), v)) for k, v in entries.items()}, indent=4))
    return root / "data", root / "val2017"


def write_mmvp(root):
    """2 visual patterns x 2 pairs, laid out as the benchmark's download."""
    rows = [(1, "Orientation", "a cat facing left"), (2, "Orientation", "a cat facing right"),
            (3, "Orientation", "a dog looking up"), (4, "Orientation", "a dog looking down"),
            (5, "Color", "a red bus"), (6, "Color", "a blue bus"), (7, "Color", "a green ring"), (8, "Color", "a ring")]
    lines = ["Question ID,Type,Statement"] + [f'{q},{t},"{s}"' for q, t, s in rows]
    root.mkdir(parents=True)
    (root / "Questions.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for q, t, _ in rows:
        save_image(root / IMAGE_FOLDER / t / f"{q}.jpg", 10 + q)
    return root


# ------------------------------------------------------------------------------------------ loaders
def test_read_sugarcrepe_and_its_errors(tmp_path):
    data, _ = write_sugarcrepe(tmp_path / "sc")
    items = read_sugarcrepe(data)
    assert [(it["type"], it["id"]) for it in items] == [("add_obj", "0"), ("add_obj", "1"), ("add_obj", "2"),
                                                        ("swap_att", "0"), ("swap_att", "1")]
    assert items[0]["negative_caption"] == "a cat and a dog"
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(ValueError, match="holds none of the SugarCrepe files add_obj.json"):
        read_sugarcrepe(bad)
    for content, message in [("[1, 2]", "expected a JSON object .* got a list"),
                             ('{"7": "x"}', "entry '7' is a str"),
                             ('{"7": {"filename": "a.jpg", "caption": "a"}}', "entry '7' has no usable 'negative_caption'"),
                             ('{"7": {"filename": "a.jpg", "caption": null, "negative_caption": "b"}}',
                              "entry '7' has no usable 'caption' \\(got None\\)"),
                             ("{oops", "not valid JSON")]:
        (bad / "swap_obj.json").write_text(content)
        with pytest.raises(ValueError, match=message) as info:
            read_sugarcrepe(bad)
        assert "swap_obj.json" in str(info.value)
    (bad / "swap_obj.json").write_bytes(b'{"\xff": 1}')
    with pytest.raises(ValueError, match="swap_obj.json is not UTF-8"):
        read_sugarcrepe(bad)


def test_read_mmvp_and_its_errors(tmp_path):
    root = write_mmvp(tmp_path / "mmvp")
    pairs = read_mmvp(root)
    assert [p["qids"] for p in pairs] == [(1, 2), (3, 4), (5, 6), (7, 8)] and pairs[2]["type"] == "Color"
    assert pairs[0]["statements"] == ("a cat facing left", "a cat facing right")
    assert pairs[3]["paths"][1] == str(root / IMAGE_FOLDER / "Color" / "8.jpg")
    csv = root / "Questions.csv"
    for text, message in [("Question ID,Kind,Statement\n1,A,x\n2,A,y\n", "missing column\\(s\\) Type"),
                          ("Question ID,Type,Statement\n1,A,x\n", "1 questions; MMVP-VLM needs pairs"),
                          ("Question ID,Type,Statement\none,A,x\n2,A,y\n", "line 2: Question ID 'one' is not"),
                          ("Question ID,Type,Statement\n1,A,x\n2,B,y\n", "lines 2-3: a pair mixes the types 'A' and 'B'"),
                          ("Question ID,Type,Statement\n1,A,x\n2,A,\n", "line 3: empty Statement"),
                          ("Question ID,Type,Statement\n1,A,x\n1,A,y\n", "a Question ID occurs twice")]:
        csv.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            read_mmvp(root)
        assert "Questions.csv" in str(info.value)
    with pytest.raises(ValueError, match="cannot read MMVP-VLM file"):
        read_mmvp(tmp_path)


# ------------------------------------------------------------------------------------------ CLIs vs a loop
def encode(model, tokenizer, image_path=None, text=None, pixels=None):
    """One image or one text at a time: the obviously-correct slow path."""
    with torch.no_grad():
        if text is not None:
            enc = tokenizer([text], model.config.max_text_len)
            return model.encode_text(enc["input_ids"], enc["attention_mask"])[0].double()
        if pixels is None:
            pixels = load_image(image_path, model.config.image_size)
        return model.encode_image(to_pixel_values(torch.from_numpy(pixels.copy())[None]))[0].double()


@pytest.mark.slow
def test_sugarcrepe_cli_matches_a_per_item_loop(tmp_path, checkpoint, capsys):  # noqa: F811
    data, images = write_sugarcrepe(tmp_path / "sc")
    out = cli("sugarcrepe").main(["--checkpoint", checkpoint, "--data-dir", str(data), "--image-dir", str(images),
                                  "--out", str(tmp_path / "sc.json")])
    model, tok = load_stage1_run(checkpoint)
    size = model.config.image_size
    blank = encode(model, tok, pixels=np.full((size, size, 3), 128, np.uint8))
    expected = {}
    for it in read_sugarcrepe(data):
        if it["filename"] == "000000000003.jpg":
            continue  # missing: skipped
        img = encode(model, tok, images / it["filename"])
        pos, neg = encode(model, tok, text=it["caption"]), encode(model, tok, text=it["negative_caption"])
        expected.setdefault(it["type"], []).append((float(img @ pos) > float(img @ neg),
                                                    float(blank @ pos) > float(blank @ neg)))
    for kind, hits in expected.items():
        got = out["per_type"][kind]
        assert got["num_items"] == len(hits)
        assert got["accuracy"] == pytest.approx(100 * np.mean([h[0] for h in hits]))
        assert got["blank_image_control"] == pytest.approx(100 * np.mean([h[1] for h in hits]))
    assert out["per_type"]["add_obj"]["shorter_caption_wins"] == 100.0  # every added object makes it longer
    assert out["per_type"]["swap_att"]["shorter_caption_wins"] == 0.0   # swaps keep the length: all ties
    assert out["num_items"] == 4 and out["skipped"]["total"] == 1 and out["chance"] == 50.0

    capsys.readouterr()  # drop the good run's progress bars
    with pytest.raises(SystemExit) as info:
        cli("sugarcrepe").main(["--checkpoint", checkpoint, "--data-dir", str(tmp_path), "--image-dir", str(images),
                                "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and "none of the SugarCrepe files" in err
    assert err.count("\n") == 1


@pytest.mark.slow
def test_mmvp_cli_matches_a_per_pair_loop(tmp_path, checkpoint, capsys):  # noqa: F811
    root = write_mmvp(tmp_path / "mmvp")
    (root / IMAGE_FOLDER / "Color" / "8.jpg").write_bytes(b"not a jpeg")  # its pair is skipped
    out = cli("mmvp").main(["--checkpoint", checkpoint, "--data-dir", str(root), "--out", str(tmp_path / "m.json")])
    model, tok = load_stage1_run(checkpoint)
    expected = {}
    for pair in read_mmvp(root)[:3]:
        img = [encode(model, tok, p) for p in pair["paths"]]
        txt = [encode(model, tok, text="a photo of " + s) for s in pair["statements"]]
        right = float(txt[0] @ img[0]) > float(txt[0] @ img[1]) and float(txt[1] @ img[1]) > float(txt[1] @ img[0])
        expected.setdefault(pair["type"], []).append(right)
    assert out["per_type"] == pytest.approx({t: 100 * np.mean(h) for t, h in expected.items()})
    assert out["average"] == pytest.approx(np.mean([100 * np.mean(h) for h in expected.values()]))
    assert out["num_pairs"] == 3 and out["num_pairs_skipped"] == 1 and out["chance"] == 25.0

    (root / "Questions.csv").write_text("Question ID,Type\n1,A\n")
    capsys.readouterr()  # drop the good run's progress bars
    with pytest.raises(SystemExit) as info:
        cli("mmvp").main(["--checkpoint", checkpoint, "--data-dir", str(root), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and "missing column(s) Statement" in err
    assert err.count("\n") == 1

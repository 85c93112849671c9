"""COCO caption metrics: same numbers as pycocoevalcap called directly, x100, clear input errors,
the CIDEr `evaluate` module and the eval/captioning.py CLI.

Java runs here (PTB tokenizer, METEOR), so the full scoring is done once per module.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spark_vlm.metrics.caption_metrics import references_from_coco, score_captions

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
os.environ.update(OFFLINE)  # before `evaluate` is imported: nothing may be downloaded
OFFLINE_ENV = {**os.environ, **OFFLINE}

REFERENCES = {
    1: ["A dog runs across the green grass.", "A brown dog running on a lawn.",
        "A dog is playing outside on the grass."],
    2: ["Two cats sleep on a red couch.", "A pair of cats napping on a sofa."],
    3: ["A man rides a bike down the street.", "A person riding a bicycle on a city road.",
        "A cyclist on a busy street."],
    4: ["A plate of food on a table."],  # not in the results: references may hold extra images
}
RESULTS = [
    {"image_id": 1, "caption": "A dog running on the grass."},
    {"image_id": 2, "caption": "Two cats are sleeping on a couch!"},
    {"image_id": 3, "caption": "a man riding a bicycle down a street"},
]
KEYS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]


def direct_pycocoevalcap(results, references):
    """What COCOEvalCap.evaluate() does, minus SPICE: tokenize, then call the scorers."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ids = [r["image_id"] for r in results]
    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in references[i]] for i in ids})
    res = tok.tokenize({r["image_id"]: [{"caption": r["caption"]}] for r in results})
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_per_image = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    return {"bleu": bleu, "bleu_per_image": bleu_per_image, "cider": cider,
            "cider_per_image": list(cider_per_image), "rouge": rouge, "ids": list(gts)}


@pytest.fixture(scope="module")
def full_scores():
    return score_captions(RESULTS, REFERENCES)


@pytest.fixture(scope="module")
def direct():
    return direct_pycocoevalcap(RESULTS, REFERENCES)


def test_all_metrics_reported_overall_and_per_image(full_scores):
    assert list(full_scores["overall"]) == KEYS
    assert full_scores["num_images"] == 3
    assert [p["image_id"] for p in full_scores["per_image"]] == [1, 2, 3]
    for entry in full_scores["per_image"]:
        assert set(entry) == {"image_id", *KEYS}
    for key in KEYS:  # x100: every score lies in [0, 100] except CIDEr, which can exceed it
        assert full_scores["overall"][key] >= 0
        if key != "CIDEr":
            assert full_scores["overall"][key] <= 100
    assert 0 < full_scores["overall"]["METEOR"] < 100


def test_bleu_cider_rouge_equal_pycocoevalcap_times_100(full_scores, direct):
    overall = full_scores["overall"]
    for n in range(4):
        assert overall[f"Bleu_{n + 1}"] == pytest.approx(100 * direct["bleu"][n], abs=1e-9)
    assert overall["CIDEr"] == pytest.approx(100 * direct["cider"], abs=1e-9)
    assert overall["ROUGE_L"] == pytest.approx(100 * direct["rouge"], abs=1e-9)
    # Per image, in pycocoevalcap's image order.
    per_image = {p["image_id"]: p for p in full_scores["per_image"]}
    for i, image_id in enumerate(direct["ids"]):
        assert per_image[image_id]["CIDEr"] == pytest.approx(100 * direct["cider_per_image"][i], abs=1e-9)
        assert per_image[image_id]["Bleu_4"] == pytest.approx(100 * direct["bleu_per_image"][3][i], abs=1e-9)
    assert overall["CIDEr"] > 50  # sanity: these captions are close to their references


def test_cider_only_matches_full_run(full_scores):
    only = score_captions(RESULTS, REFERENCES, scorers=["CIDEr"])
    assert list(only["overall"]) == ["CIDEr"]
    assert only["overall"]["CIDEr"] == pytest.approx(full_scores["overall"]["CIDEr"], abs=1e-9)


@pytest.mark.parametrize("results, message", [
    ([{"image_id": 99, "caption": "a dog"}], "image_id 99"),
    ([{"image_id": 1, "caption": "a dog"}, {"image_id": 1, "caption": "a cat"}], "more than once"),
    ([{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": ""}], "result #1 (image_id=2)"),
    ([{"image_id": 3, "caption": "   \n"}], "empty caption"),
    ([{"image_id": 1}], "'image_id' and 'caption'"),
    ([], "empty"),
])
def test_validation_errors_name_the_offending_entry(results, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        score_captions(results, REFERENCES)


def test_spice_explains_why_it_is_unavailable():
    with pytest.raises(RuntimeError, match="CoreNLP"):
        score_captions(RESULTS, REFERENCES, spice=True)


def test_unknown_scorer_rejected():
    with pytest.raises(ValueError, match="unknown scorer"):
        score_captions(RESULTS, REFERENCES, scorers=["SPIDEr"])


def test_references_from_coco_groups_captions_by_image():
    coco = {"images": [{"id": 5}], "annotations": [{"image_id": 5, "caption": "a"}, {"image_id": 5, "caption": "b"}]}
    assert references_from_coco(coco) == {5: ["a", "b"]}
    with pytest.raises(ValueError, match="annotations"):
        references_from_coco({"images": []})


def test_cider_evaluate_module_loads_offline_and_matches_library(direct):
    import evaluate

    cider = evaluate.load(str(REPO / "eval" / "metrics" / "cider"))
    out = cider.compute(predictions=[r["caption"] for r in RESULTS],
                        references=[REFERENCES[r["image_id"]] for r in RESULTS])
    assert out["CIDEr"] == pytest.approx(100 * direct["cider"], abs=1e-9)


def _coco_files(tmp_path):
    captions = {"images": [{"id": i} for i in REFERENCES],
                "annotations": [{"id": k, "image_id": i, "caption": c}
                                for k, (i, c) in enumerate((i, c) for i, cs in REFERENCES.items() for c in cs)]}
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))


@pytest.mark.slow  # CLI subprocesses + Java
def test_cli_end_to_end(tmp_path, full_scores):
    _coco_files(tmp_path)
    out = tmp_path / "scores.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval" / "captioning.py"), "--results", str(tmp_path / "results.json"),
         "--annotations", str(tmp_path / "captions.json"), "--out", str(out), "--split", "val"],
        capture_output=True, text=True, env=OFFLINE_ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(out.read_text())
    assert scores["split"] == "val" and scores["num_images"] == 3
    assert len(scores["per_image"]) == 3
    for key in KEYS:
        assert scores["overall"][key] == pytest.approx(full_scores["overall"][key], abs=1e-9)
    assert "| Bleu_1 |" in proc.stdout and "CIDEr" in proc.stdout


@pytest.mark.slow  # CLI subprocesses + Java
def test_cli_malformed_json_names_the_file(tmp_path):
    _coco_files(tmp_path)
    bad = tmp_path / "broken_results.json"
    bad.write_text('[{"image_id": 1, "caption": "a dog"')
    proc = subprocess.run(
        [sys.executable, str(REPO / "eval" / "captioning.py"), "--results", str(bad),
         "--annotations", str(tmp_path / "captions.json"), "--out", str(tmp_path / "o.json")],
        capture_output=True, text=True, env=OFFLINE_ENV, timeout=120)
    assert proc.returncode != 0
    assert "broken_results.json" in proc.stderr and "not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # Java (pycocoevalcap), twice
def test_blind_baseline_is_scored_beside_the_model(tmp_path):
    from spark_vlm.evaluation.captioning import caption_metrics_report

    refs = {1: ["a red circle left of a blue square", "one red circle and one blue square"],
            2: ["two green stars", "a pair of green stars"],
            3: ["a large yellow ring", "one big yellow ring"]}
    coco = {"images": [{"id": i} for i in refs],
            "annotations": [{"id": 10 * i + k, "image_id": i, "caption": c} for i, caps in refs.items()
                            for k, c in enumerate(caps)]}
    results = [{"image_id": i, "caption": caps[0]} for i, caps in refs.items()]  # a perfect-ish captioner
    (tmp_path / "refs.json").write_text(json.dumps(coco))
    (tmp_path / "res.json").write_text(json.dumps(results))
    report = caption_metrics_report(str(tmp_path / "res.json"), str(tmp_path / "refs.json"), blind_seed=0)
    model, blind = report.result["overall"], report.result["blind_baseline"]["overall"]
    assert model["CIDEr"] > blind["CIDEr"] and model["Bleu_4"] > blind["Bleu_4"]
    assert [r["captions"].split(" (")[0] for r in report.rows] == ["model", "blind baseline"]
    # Deterministic by seed (the draw is checked directly: a second pycocoevalcap run costs ~20 s of Java).
    from spark_vlm.metrics.caption_metrics import blind_captions
    assert blind_captions(refs, list(refs), seed=0) == blind_captions(refs, list(refs), seed=0)
    assert report.result["blind_baseline"]["seed"] == 0

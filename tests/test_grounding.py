"""Grounding against ground-truth masks (eval/grounding.py): the metric on hand-built cases where the answer is
known, the word -> object mapping, and the CLI end to end on a tiny random checkpoint."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spark_vlm.metrics.grounding import named_objects, words_of
from spark_vlm.losses import sparc_alignment
from spark_vlm.metrics.grounding import (any_object_baseline, mass_in_mask, patch_coverage, pointing_hit,
                                        uniform_baseline)

REPO = Path(__file__).resolve().parents[1]


def test_patch_coverage_counts_pixels_per_patch():
    mask = np.zeros((4, 4), bool)
    mask[0:2, 0:2] = True  # patch 0 fully
    mask[0, 2] = True  # a quarter of patch 1
    np.testing.assert_allclose(patch_coverage(mask, 2), [1.0, 0.25, 0.0, 0.0])
    with pytest.raises(ValueError, match="does not split"):
        patch_coverage(np.zeros((5, 4), bool), 2)


def test_mass_pointing_and_uniform_baseline_by_hand():
    coverage = np.array([1.0, 0.25, 0.0, 0.0])
    assert mass_in_mask(np.array([0.5, 0.5, 0.0, 0.0]), coverage) == pytest.approx(0.625)
    assert mass_in_mask(np.array([2.0, 0.0, 2.0, 0.0]), coverage) == pytest.approx(0.5)  # not renormalised first
    assert pointing_hit(np.array([0.1, 0.6, 0.3, 0.0]), coverage)  # patch 1 touches the object
    assert not pointing_hit(np.array([0.1, 0.2, 0.7, 0.0]), coverage)
    assert uniform_baseline(coverage) == (pytest.approx(1.25 / 4), 0.5)
    with pytest.raises(ValueError):
        mass_in_mask(np.zeros(4), coverage)


def test_any_object_baseline_by_hand():
    """Two objects: the named one covers patch 0 and half of patch 1, the other patch 3. The word-agnostic readout
    weighs patches by their share of object pixels (1, 0.5, 0, 1): mass (1 + 0.5 * 0.5) / 2.5 on the named object; its heaviest
    patches are 0 and 3 (tied), one of which touches the named object: pointing 0.5 in expectation."""
    named = np.array([1.0, 0.5, 0.0, 0.0])
    objects = np.array([1.0, 0.5, 0.0, 1.0])
    assert any_object_baseline(named, objects) == (pytest.approx(0.5), 0.5)
    whole = np.array([1.0, 0.0, 0.0, 1.0])  # patch-aligned objects, a word naming them all: all of it
    assert any_object_baseline(whole, whole) == (pytest.approx(1.0), 1.0)


def test_a_token_that_matches_exactly_the_masked_patches_puts_all_its_mass_there():
    """Patches 0 and 1 hold the token's direction, the others are orthogonal: SPARC's weights are 1/2 on each
    of them, so mass-in-mask is exactly 1; the same token against identical patches gives the uniform baseline."""
    D, P = 4, 4
    token = torch.tensor([[[1.0, 0, 0, 0]]])
    patches = torch.zeros(1, P, D)
    patches[0, :2, 0] = 1.0
    patches[0, 2:, 1] = 1.0
    weights = sparc_alignment(patches, token, torch.ones(1, 1, dtype=torch.bool))[1][0, 0].numpy()
    coverage = np.array([1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(weights, [0.5, 0.5, 0.0, 0.0], atol=1e-6)
    assert mass_in_mask(weights, coverage) == pytest.approx(1.0)
    assert pointing_hit(weights, coverage)


def test_words_are_rebuilt_from_pieces_and_mapped_to_objects():
    assert words_of(["▁two", "▁red", "▁circ", "les", ","]) == [("two", [0]), ("red", [1]), ("circles", [2, 3, 4])]
    assert words_of(["Ġa", "Ġhex", "es"]) == [("a", [0]), ("hexes", [1, 2])]
    objects = [{"shape": "hexagon", "color": "red"}, {"shape": "circle", "color": "red"},
               {"shape": "circle", "color": "blue"}]
    assert named_objects("hexes", objects) == ("shape", objects[:1])
    assert named_objects("balls", objects) == ("shape", objects[1:])  # a synonym's plural
    assert named_objects("red", objects) == ("colour", objects[:2])
    assert named_objects("star", objects) == ("shape", [])
    assert named_objects("left", objects) is None


@pytest.mark.slow  # builds a tiny checkpoint and runs the CLI twice
def test_cli_reports_model_beside_its_baselines(tmp_path):
    sys.path.insert(0, str(REPO / "eval"))
    try:
        import grounding as cli
    finally:
        sys.path.pop(0)
    from test_eval_cli import tiny_stage1_run

    run = tiny_stage1_run(tmp_path)
    out = tmp_path / "g.json"
    result = cli.main(["--checkpoint", str(run), "--num-images", "12", "--out", str(out)])
    first = out.read_text()
    cli.main(["--checkpoint", str(run), "--num-images", "12", "--out", str(out)])
    assert out.read_text() == first  # deterministic
    assert result["all"]["words"] == result["shape"]["words"] + result["colour"]["words"] > 0
    for name in ("model", "model_centred", "uniform", "any_object", "position_only", "blank_image"):
        assert 0 <= result["all"][f"{name}.mass_in_mask"] <= 100 and 0 <= result["all"][f"{name}.pointing"] <= 100
    shortcut = result["shortcut"]
    assert 0 <= shortcut["position_variance_share"] <= 1 and 0 < shortcut["patches_kept_frac"] <= 1
    assert all(np.isfinite(shortcut[k]) for k in shortcut)
    # knowing where the objects are beats knowing nothing
    assert result["all"]["any_object.mass_in_mask"] > result["all"]["uniform.mass_in_mask"]
    assert json.loads(first)["objective"] == "unknown"  # no config.yaml in this hand-made run
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2

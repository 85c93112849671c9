"""Scene captions read back into claims and checked against the ground truth (hand-built scenes), every
generated caption true of its own scene, and truth-aware retrieval against a per-caption loop."""
import numpy as np
import pytest

from spark_vlm.data.scene_captions import CAPTION_KINDS
from spark_vlm.data.scene_truth import holds, parse_caption, truth_matrix
from spark_vlm.data.scenes import SceneConfig, generate_scene
from spark_vlm.metrics.retrieval_truth import truth_aware_recall

MARGIN = 0.15 * 64


def obj(shape, color, size, x, y):
    return {"shape": shape, "color": color, "size": size, "center": (float(x), float(y))}


# A: a small red circle left of (and above) a large blue square, two green stars; plain background.
A = {"background": "solid", "objects": [obj("circle", "red", "small", 10, 10), obj("square", "blue", "large", 40, 40),
                                        obj("star", "green", "small", 10, 50), obj("star", "green", "large", 50, 10)]}
# B: like A but a second red circle (large), three green stars... on a gradient.
B = {"background": "gradient", "objects": [obj("circle", "red", "small", 10, 10), obj("circle", "red", "large", 50, 50),
                                           obj("square", "blue", "large", 40, 40)]
     + [obj("star", "green", "small", 5 + 20 * i, 60) for i in range(3)]}


def true_of(caption, kind, scene):
    return holds(parse_caption(caption, kind), scene, MARGIN)


@pytest.mark.parametrize("caption,kind,in_a,in_b", [
    ("four shapes: a red circle, a blue square and two green stars", "enumeration", True, False),
    ("there are four objects: a small red circle, a big blue box and two green pentagrams", "enumeration", True, False),
    ("a red circle and two green stars, four shapes in total", "enumeration", False, False),  # a group missing
    ("four shapes: a large red circle, a blue square and two green stars", "enumeration", False, False),  # wrong size
    ("there are two green stars", "count", True, False),
    ("three green stars among six shapes", "count", False, True),
    ("an image with one blue square", "count", True, True),
    ("one blue square among five shapes", "count", False, False),
    ("a red circle is left of a blue square", "relation", True, False),      # B: "a red circle" is ambiguous
    ("a small red circle left of a blue square", "relation", True, True),   # the size singles it out in B
    ("there is a blue square to the right of a small red circle", "relation", True, True),
    ("a blue square left of a red circle", "relation", False, False),
    ("a large red circle below a blue square", "relation", False, True),
    ("a red circle above a blue square", "relation", True, False),
    ("a blue square above a large green star", "relation", False, False),   # 30 px the wrong way
    ("a red circle", "partial", True, False),                                # B has two red circles
    ("a picture of two green stars and a big blue square", "partial", True, False),
    ("two red circles on a shaded background", "partial", False, True),
    ("two green stars on a plain background", "partial", True, False),
    ("red, blue and green shapes", "colour", True, True),
    ("shapes in red and blue", "colour", False, False),
    ("four objects in red, green and blue", "colour", True, False),
    ("four shapes, all red", "colour", False, False),
    ("two small shapes and two big objects", "size", True, False),
    ("four small shapes and two large objects", "size", False, True),
    ("two little shapes", "size", False, False),                             # the large ones are unmentioned
])
def test_claims_checked_against_hand_built_scenes(caption, kind, in_a, in_b):
    assert (true_of(caption, kind, A), true_of(caption, kind, B)) == (in_a, in_b)


def test_single_colour_and_single_object():
    one = {"background": "noise", "objects": [obj("ring", "white", "small", 30, 30)]}
    assert true_of("a single white shape", "colour", one) and true_of("one white object", "colour", one)
    assert not true_of("a single white shape", "colour", A)
    assert true_of("only white shapes", "colour", {**one, "objects": one["objects"] * 2})


@pytest.mark.parametrize("caption,kind", [("a purple elephant", "count"), ("seventeen red circles", "count"),
                                          ("a red circle near a blue star", "relation"), ("red shapes", "size"),
                                          ("a red circle", "poem"), ("many shapes: a red circle", "enumeration")])
def test_unreadable_captions_raise(caption, kind):
    with pytest.raises(ValueError, match="caption|kind"):
        parse_caption(caption, kind)


def test_every_generated_caption_is_true_of_its_own_scene_and_has_a_kind():
    config = SceneConfig(image_size=64)
    scenes = [generate_scene(config, "test", i) for i in range(150)]
    captions = [c for s in scenes for c in s["captions"]]
    kinds = [k for s in scenes for k in s["caption_kinds"]]
    assert set(kinds) == set(CAPTION_KINDS) and len(kinds) == len(captions)
    truth = truth_matrix(captions, kinds, scenes, config.relation_margin * 64)
    own = np.repeat(np.arange(len(scenes)), 5)
    assert truth[own, np.arange(len(captions))].all()
    assert 0.3 < (truth.sum(0) > 1).mean() < 0.9  # templates: many captions fit more than one scene
    # enumerations name everything, so they single a scene out far more often than count captions do
    k = truth.sum(0)
    assert np.mean(k[np.array(kinds) == "enumeration"] == 1) > np.mean(k[np.array(kinds) == "count"] == 1)


def slow_truth_aware(sim, truth, own, kinds):
    """Per caption: standard hit = own image strictly above every other image; truth hit = the best true image
    strictly above every false image; ceiling 1/k; chance k/N."""
    rows = {}
    for j in range(sim.shape[1]):
        col, true = sim[:, j], truth[:, j]
        others = [col[i] for i in range(len(col)) if i != own[j]]
        hit = all(col[own[j]] > x for x in others)
        false = [col[i] for i in range(len(col)) if not true[i]]
        truth_hit = all(max(col[true]) > x for x in false)
        for key in (kinds[j], "all"):
            rows.setdefault(key, []).append((hit, truth_hit, 1 / true.sum(), true.sum() / len(col)))
    return {key: {"num_texts": len(v), "R@1": 100 * np.mean([x[0] for x in v]),
                  "truth_R@1": 100 * np.mean([x[1] for x in v]), "R@1_ceiling": 100 * np.mean([x[2] for x in v]),
                  "truth_R@1_chance": 100 * np.mean([x[3] for x in v])} for key, v in rows.items()}


def test_truth_aware_recall_matches_a_per_caption_loop():
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 4, size=(7, 20)).astype(np.float32)  # few values: many ties, broken pessimistically
    own = rng.integers(0, 7, size=20)
    truth = rng.random((7, 20)) < 0.3
    truth[own, np.arange(20)] = True
    kinds = [("count", "relation", "partial")[j % 3] for j in range(20)]
    got, want = truth_aware_recall(sim, truth, own, kinds), slow_truth_aware(sim, truth, own, kinds)
    assert list(got) == ["count", "relation", "partial", "all"]
    for key, w in want.items():
        for name, value in w.items():
            assert got[key][name] == pytest.approx(value), (key, name)
        assert got[key]["truth_R@1_ceiling"] == 100.0


def test_truth_aware_recall_by_hand():
    # 2 images; "t0" true of both (own image 0), "t1" true of image 1 only.
    truth = np.array([[True, False], [True, True]])
    sim = np.array([[0.1, 0.2], [0.9, 0.8]])     # image 1 ranks first for both captions
    out = truth_aware_recall(sim, truth, [0, 1], ["count", "enumeration"])
    assert out["count"]["R@1"] == 0.0 and out["count"]["truth_R@1"] == 100.0 and out["count"]["R@1_ceiling"] == 50.0
    assert out["enumeration"]["R@1"] == out["enumeration"]["truth_R@1"] == 100.0
    assert out["all"]["truth_R@1_chance"] == pytest.approx(75.0)
    assert out["all"]["i2t_truth_R@1"] == 50.0  # image 0's top caption (t1) is false of it
    with pytest.raises(ValueError, match="not true of its own image"):
        truth_aware_recall(sim, np.eye(2, dtype=bool)[::-1], [0, 1], ["count", "count"])


def test_stage1_eval_reports_truth_aware_scores_beside_their_ceilings(tmp_path):
    """The periodic held-out eval on the scenes: per-kind and truth-aware keys, truth from the cached val scenes
    in the order of the held-out CaptionedImages (every caption true of its own image)."""
    import torch

    from spark_vlm.data.pairs import CaptionedImages
    from spark_vlm.data.scenes import cached_scenes
    from spark_vlm.data.tokenizer import train_sentencepiece
    from spark_vlm.models.dual_encoder import SparkConfig, SparkModel
    from spark_vlm.training.stage1_config import DataConfig
    from spark_vlm.training.stage1_eval import evaluate_stage1, held_out_truth

    d = DataConfig(num_val=12, cache_dir=str(tmp_path / "scenes"))
    truth = held_out_truth(d, 32)
    images, captions, ids = cached_scenes("val", 12, 32, cache_dir=d.cache_dir).arrays()
    tok = train_sentencepiece([c for caps in captions for c in caps], vocab_size=120, cache_dir=tmp_path / "sp")
    data = CaptionedImages(images, captions, ids, tokenizer=tok, max_len=24)
    assert truth["truth"][data.caption_image, np.arange(60)].all() and len(truth["kinds"]) == 60
    torch.manual_seed(0)
    model = SparkModel(SparkConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                                   vocab_size=tok.vocab_size, max_text_len=24, text_width=32, text_layers=1,
                                   text_heads=2, embed_dim=16)).eval()
    out = evaluate_stage1(model, data, torch.device("cpu"), truth=truth)
    assert out["truth_R@1_ceiling"] == 100.0 and out["truth_R@1"] >= out["text_to_image_R@1"]
    assert 0 < out["text_to_image_R@1_ceiling"] <= 100.0 and 0 < out["truth_R@1_chance"] < 100.0
    kinds = {key.split("/")[0] for key in out if "/" in key}
    assert kinds == set(truth["kinds"])
    for kind in kinds:
        assert out[f"{kind}/text_to_image_R@1"] <= 100.0 and out[f"{kind}/truth_R@1_ceiling"] == 100.0
    assert held_out_truth(DataConfig(kind="coco"), 32) is None
    # A FILIP run (late_interaction): each direction from FILIP's own similarity, the truth-aware t->i from t->i
    from spark_vlm.metrics.retrieval import retrieval_recall
    from spark_vlm.training.stage1_eval import late_interaction_pairs, truth_scores
    late = evaluate_stage1(model, data, torch.device("cpu"), truth=truth, late_interaction=True)
    i2t, t2i = late_interaction_pairs(model, data, 256, torch.device("cpu"))
    assert late["image_to_text_R@5"] == retrieval_recall(i2t, data.caption_image)["image_to_text_R@5"]
    assert late["text_to_image_R@5"] == retrieval_recall(t2i, data.caption_image)["text_to_image_R@5"]
    assert late["truth_R@1"] == truth_scores(t2i, data, truth)["truth_R@1"]
    assert late["image_to_text_truth_R@1"] == truth_scores(i2t, data, truth)["image_to_text_truth_R@1"]


def test_periodic_grounding_scores_match_the_grounding_protocol(tmp_path):
    """The periodic evaluation's mass-in-mask and pointing equal a by-hand loop over the same words with
    spark_vlm.metrics.grounding, and uniform weights score exactly the uniform baseline."""
    import torch

    from spark_vlm.data.images import to_pixel_values
    from spark_vlm.data.pairs import CaptionedImages
    from spark_vlm.data.scenes import cached_scenes
    from spark_vlm.data.tokenizer import train_sentencepiece
    from spark_vlm.losses import sparc_alignment
    from spark_vlm.metrics.grounding import mass_in_mask, named_words, pointing_hit, uniform_baseline
    from spark_vlm.models.dual_encoder import SparkConfig, SparkModel
    from spark_vlm.training.stage1_config import DataConfig
    from spark_vlm.training.stage1_eval import evaluate_stage1, grounding_set

    d = DataConfig(num_val=6, cache_dir=str(tmp_path / "scenes"))
    val = cached_scenes("val", 6, 32, cache_dir=d.cache_dir)
    images, captions, ids = val.arrays()
    tok = train_sentencepiece([c for caps in captions for c in caps], vocab_size=120, cache_dir=tmp_path / "sp")
    data = CaptionedImages(images, captions, ids, tokenizer=tok, max_len=24)
    grounding = grounding_set(d, data, tok, 32, 8, num_scenes=4)
    assert grounding["num_images"] == 4 and grounding["words"]
    assert all(row < data.offsets[4] for row, _, _ in grounding["words"])
    assert grounding_set(DataConfig(kind="coco"), data, tok, 32, 8) is None
    torch.manual_seed(0)
    model = SparkModel(SparkConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                                   vocab_size=tok.vocab_size, max_text_len=24, text_width=32, text_layers=1,
                                   text_heads=2, embed_dim=16)).eval()
    out = evaluate_stage1(model, data, torch.device("cpu"), grounding=grounding)

    masses, hits, uniform = [], [], []
    with torch.no_grad():
        for i in range(4):
            patches = model.patch_embeddings(to_pixel_values(torch.from_numpy(images[i:i + 1])))
            for row in range(data.offsets[i], data.offsets[i + 1]):
                ids_row, mask_row = data.input_ids[row:row + 1], data.attention_mask[row:row + 1]
                tokens, token_mask = model.token_embeddings(ids_row, mask_row)
                w = sparc_alignment(patches, tokens, token_mask)[1][0].numpy()
                for _, positions, coverage in named_words(tok.pieces(ids_row[0][mask_row[0]].tolist()),
                                                          val[i]["objects"], 4):
                    masses.append(mass_in_mask(w[positions].mean(0), coverage))
                    hits.append(pointing_hit(w[positions].mean(0), coverage))
                    uniform.append(uniform_baseline(coverage))
    assert out["grounding_words"] == len(masses) == len(grounding["words"])
    assert out["grounding_mass_in_mask"] == pytest.approx(100 * np.mean(masses), abs=1e-4)
    assert out["grounding_pointing"] == pytest.approx(100 * np.mean(hits))
    assert out["grounding_mass_in_mask_uniform"] == pytest.approx(100 * np.mean([u[0] for u in uniform]))
    assert out["grounding_pointing_uniform"] == pytest.approx(100 * np.mean([u[1] for u in uniform]))

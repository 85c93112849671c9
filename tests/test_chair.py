"""CHAIR: singulariser, object extraction with the reference's rules, the metric on hand-worked
fixtures, ground truth from COCO files, the `evaluate` module and eval/hallucination.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spark_vlm.metrics.chair import (ChairVocabulary, compute_chair, extract_objects,
                                     gt_objects_from_coco, singularize, tokenize)
from spark_vlm.metrics.pattern_singular import pattern_singularize

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
os.environ.update(OFFLINE)  # before `evaluate` is imported: nothing may be downloaded

COCO = ChairVocabulary.coco()
REF = ChairVocabulary.coco(reference_exact=True)
SHAPES = ChairVocabulary.from_synonyms({
    "circle": ["circle", "disc", "ball"], "square": ["square", "box", "block"],
    "cross": ["cross", "plus"], "ring": ["ring", "donut", "hoop"], "diamond": ["diamond", "rhombus"],
})
COCO_80 = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]


# --- singulariser -----------------------------------------------------------------------------

@pytest.mark.parametrize("plural, singular", [
    ("dogs", "dog"), ("buses", "bus"), ("bus", "bus"), ("minibuses", "minibus"), ("glasses", "glass"),
    ("ties", "tie"), ("puppies", "puppy"), ("doggies", "doggie"), ("knives", "knife"),
    ("calves", "calf"), ("thieves", "thief"), ("women", "woman"), ("policemen", "policeman"),
    ("children", "child"), ("grandchildren", "grandchild"), ("people", "person"), ("mice", "mouse"),
    ("geese", "goose"), ("oxen", "ox"), ("sheep", "sheep"), ("skis", "ski"), ("taxis", "taxi"),
    ("zebus", "zebu"), ("scissors", "scissors"), ("tennis", "tennis"), ("benches", "bench"),
    ("sandwiches", "sandwich"), ("toothbrushes", "toothbrush"), ("canoes", "canoe"),
    ("buffaloes", "buffalo"), ("stoves", "stove"), ("suitcases", "suitcase"), ("horses", "horse"),
    ("houses", "house"), ("boxes", "box"), ("crosses", "cross"), ("pluses", "plus"),
    ("rhombuses", "rhombus"), ("hexes", "hex"), ("omen", "omen"), ("grass", "grass"), ("this", "this"),
])
def test_singularize(plural, singular):
    assert singularize(plural) == singular


# Plurals written out for the synonyms where adding -s/-es/-ies is wrong or there is no plural.
_PLURALS = {"man": "men", "woman": "women", "child": "children", "grandchild": "grandchildren",
            "policeman": "policemen", "gentleman": "gentlemen", "serviceman": "servicemen",
            "thief": "thieves", "mouse": "mice", "goose": "geese", "ox": "oxen", "knife": "knives",
            "pocketknife": "pocketknives", "knive": "knives", "calf": "calves", "person": "people",
            "buffalo": "buffaloes"}
_NO_PLURAL = {"sheep", "bison", "cattle", "fowl", "waterfowl", "peafowl", "aircraft", "watercraft",
              "luggage", "broccoli", "scissors", "skis", "people", "children", "oxen", "iPhone"}


def _pluralize(phrase: str) -> str:
    *head, last = phrase.split()
    if last in _PLURALS:
        last = _PLURALS[last]
    elif last.endswith(("s", "x", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join([*head, last])


def test_every_coco_synonym_and_its_plural_maps_to_its_category():
    checked = 0
    for category, words in COCO.synonyms.items():
        for word in words:
            if word in _NO_PLURAL or len(word.split()) > 2:
                continue  # "iPhone" never matches in the reference either; "stove top oven" is 3 words
            for form in (word, _pluralize(word)):
                found = [c for _, c in extract_objects(f"there is {form} here", COCO)]
                assert found == [category], (form, found)
                checked += 1
    assert checked > 700


def test_vocabulary_is_the_80_coco_categories():
    assert COCO.categories == COCO_80
    # The two leading-space entries of the reference list are stripped and so reachable.
    assert COCO.word_to_category["motor bike"] == "motorcycle"
    assert COCO.word_to_category["cheesecake"] == "cake"
    assert all(w == w.strip() for w in COCO.word_to_category)


def test_tokenize_splits_punctuation_and_clitics():
    assert tokenize("The dog's ball, isn't it?") == ["the", "dog", "'s", "ball", ",", "is", "n't", "it", "?"]
    assert tokenize("A T-shirt.") == ["a", "t-shirt", "."]


# --- object extraction (reference rules) -------------------------------------------------------

@pytest.mark.parametrize("caption, expected", [
    # plurals and synonyms: dogs -> dog, kitten is a cat, sofa is a couch
    ("Two dogs and a kitten sit on the sofa.", [("dog", "dog"), ("kitten", "cat"), ("sofa", "couch")]),
    # two-word names: a hot dog is no dog, a teddy bear no bear
    ("A man eats a hot dog next to a teddy bear.",
     [("man", "person"), ("hot dog", "hot dog"), ("teddy bear", "teddy bear")]),
    # baby/adult <animal> is the animal (no person); a passenger train is a train (no person)
    ("A baby cat and an adult elephant near a passenger train.",
     [("cat", "cat"), ("elephant", "elephant"), ("train", "train")]),
    # bow tie -> tie (no "bow"); toilet seat -> toilet (no chair)
    ("A man in a bow tie sits on the toilet seat.", [("man", "person"), ("tie", "tie"), ("toilet", "toilet")]),
    # "seat" is dropped whenever "toilet" is in the caption
    ("The seat of the toilet is up.", [("toilet", "toilet")]),
    ("Traffic lights by a fire hydrant and a stop sign.",
     [("traffic light", "traffic light"), ("fire hydrant", "fire hydrant"), ("stop sign", "stop sign")]),
    # "dining table" is not in the reference's two-word list; "table" alone names the category
    ("People with cell phones at a dining table.",
     [("person", "person"), ("cell phone", "cell phone"), ("table", "dining table")]),
    ("Wine glasses on a desk.", [("wine glass", "wine glass"), ("desk", "dining table")]),
    ("A motor bike and a cheesecake.", [("motor bike", "motorcycle"), ("cheesecake", "cake")]),
    ("A bus.", [("bus", "bus")]),  # pattern.en would make this "bu" and miss it
    ("A train track in a field.", []),  # reference rule: "train track" is not a train
    ("The dog's ball.", [("dog", "dog"), ("ball", "sports ball")]),
    ("A sunny day at the beach.", []),
])
def test_extract_objects(caption, expected):
    assert extract_objects(caption, COCO) == expected


def test_custom_vocabulary_uses_the_same_rules():
    assert extract_objects("Two boxes, a ball and three crosses.", SHAPES) == [
        ("box", "square"), ("ball", "circle"), ("cross", "cross")]
    assert extract_objects("A few pluses and rhombuses.", SHAPES) == [("plus", "cross"), ("rhombus", "diamond")]
    assert extract_objects("a dog", SHAPES) == []
    with pytest.raises(ValueError, match="more than two words"):
        ChairVocabulary.from_synonyms({"cone": ["big traffic cone"]})


# --- the metric --------------------------------------------------------------------------------

def test_compute_chair_hand_worked():
    gt = {1: {"dog", "couch"}, 2: {"cat"}, 3: {"person"}, 4: {"toilet", "person"}}
    results = [
        # cat, cat, sofa(couch), dog: 4 mentions, both cats hallucinated (repeats count)
        {"image_id": 1, "caption": "A cat and a cat on a sofa with a dog."},
        # baby cat -> cat: 1 mention, none hallucinated ("baby" would be a person otherwise)
        {"image_id": 2, "caption": "A baby cat is sleeping."},
        # no object at all
        {"image_id": 3, "caption": "A sunny day."},
        # man(person), bow tie -> tie (hallucinated), toilet seat -> toilet: 3 mentions, 1 hallucinated
        {"image_id": 4, "caption": "A man in a bow tie next to the toilet seat."},
    ]
    out = compute_chair(results, gt, COCO)
    assert out["num_captions"] == 4
    assert out["num_hallucinated_captions"] == 2 and out["CHAIRs"] == pytest.approx(50.0)   # captions 1, 4
    assert out["num_mentions"] == 8 and out["num_hallucinated_mentions"] == 3
    assert out["CHAIRi"] == pytest.approx(37.5)  # 3 / 8; counting each object once would give 2 / 7
    assert out["mean_caption_length"] == pytest.approx((11 + 5 + 3 + 11) / 4)
    assert out["mean_objects_per_caption"] == pytest.approx(2.0)
    first = out["per_caption"][0]
    assert first["image_id"] == 1 and first["caption"] == results[0]["caption"]
    assert first["mentioned"] == [["cat", "cat"], ["cat", "cat"], ["sofa", "couch"], ["dog", "dog"]]
    assert first["hallucinated"] == [["cat", "cat"], ["cat", "cat"]]
    assert out["per_caption"][2]["mentioned"] == [] and out["per_caption"][3]["hallucinated"] == [["tie", "tie"]]


def test_compute_chair_custom_vocabulary():
    # box(square) and ball(circle) are present, cross is not: 1 of 3 mentions hallucinated
    out = compute_chair([{"image_id": 10, "caption": "Two boxes, a ball and three crosses."}],
                        {10: {"square", "circle"}}, SHAPES)
    assert out["CHAIRs"] == pytest.approx(100.0)
    assert out["CHAIRi"] == pytest.approx(100 / 3)


def test_compute_chair_errors():
    with pytest.raises(ValueError, match="image_id 7"):
        compute_chair([{"image_id": 7, "caption": "a dog"}], {1: {"dog"}}, COCO)
    with pytest.raises(ValueError, match="empty"):
        compute_chair([], {1: {"dog"}}, COCO)
    # no mention anywhere: CHAIRi is 0 rather than a division by zero
    assert compute_chair([{"image_id": 1, "caption": "nothing"}], {1: set()}, COCO)["CHAIRi"] == 0.0


# --- reference-exact mode (pattern.en 2.6's singularize, unstripped synonyms) -------------------
# Each expected value is traced by hand through pattern 2.6's singularize (clips/pattern tag 2.6,
# pattern/text/en/inflect.py): (1) a word that ends an "uninflected"/"uncountable" entry is returned
# as is, (2) "<ie-word>s" is returned as is, (3) irregular plurals by suffix, (4) the first matching
# rule of singular_rules.
@pytest.mark.parametrize("word, expected", [
    ("bus", "bu"),          # no list/irregular hit; "(bus)es$" needs "es"; last rule "s$" -> ""
    ("buses", "bus"),       # "(bus)es$" -> "bus"
    ("ties", "ty"),         # "^tie" in the -ie list is literal text; "([^aeiouy]|qu)ies$" -> "t" + "y"
    ("canoes", "cano"),     # "(shoe)s$" no; "(o)es$" -> "o": "cano"
    ("shoes", "shoe"),      # "(shoe)s$" comes first
    ("glass", "glas"),      # "(x|ch|ss|sh)es$" needs "es"; "s$" -> "glas"
    ("glasses", "glass"),   # "(x|ch|ss|sh)es$" -> "glass"
    ("children", "children"),  # 2.6 has no "children" irregular and no rule matches
    ("women", "woman"),     # irregular suffix "men" -> "man"
    ("people", "person"),   # irregular
    ("shelves", "shelve"),  # irregular "helves" -> "helve" matches as a suffix before the -ves rules
    ("doggies", "doggies"),  # "doggie" + "s" in the -ie list: pattern returns the word itself
    ("cookies", "cookies"),
    ("mice", "mouse"),      # "([m|l])ice$" -> "mouse"
    ("is", "is"),           # "chassis" ends with "is": left alone
    ("a", "a"),             # "georgia" ends with "a"
    ("carp", "carp"),       # the run-together "wildebeestcarp" still ends with "carp"
    ("dogs", "dog"), ("knives", "knife"), ("benches", "bench"), ("sandwiches", "sandwich"),
    ("mothers-in-law", "mother-in-law"),  # compound with a preposition: singularise the first part
    ("dogs'", "dog's"),
    ("your", "ymy"),        # irregular "our" -> "my" as a suffix
])
def test_pattern_singularize_hand_traced(word, expected):
    assert pattern_singularize(word) == expected


def test_reference_exact_extraction_quirks():
    # "bus" -> "bu" is no object, "buses" -> "bus" is
    assert extract_objects("a bus next to two buses.", REF) == [("bus", "bus")]
    assert extract_objects("a bus next to two buses.", COCO) == [("bus", "bus"), ("bus", "bus")]
    # "bow ties" -> "bow ty": no "bow tie" merge, and "bow" alone is a tie synonym
    assert extract_objects("bow ties", REF) == [("bow", "tie")]
    assert extract_objects("bow ties", COCO) == [("tie", "tie")]
    # " motor bike" and " cheesecake" keep their leading space in the reference's list: never matched
    assert extract_objects("a motor bike and a cheesecake", REF) == []
    assert extract_objects("a motor bike and a cheesecake", COCO) == [("motor bike", "motorcycle"),
                                                                      ("cheesecake", "cake")]


# Three images; image 3 has no instance annotation, its objects come from its reference caption only.
BUS_TIES_CANOES = {
    "instances": {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
                  "categories": [{"id": 6, "name": "bus"}, {"id": 1, "name": "person"}],
                  "annotations": [{"image_id": 1, "category_id": 6}, {"image_id": 2, "category_id": 1}]},
    "captions": {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
                 "annotations": [{"image_id": 1, "caption": "A bus on a street."},
                                 {"image_id": 2, "caption": "A man standing outside."},
                                 {"image_id": 3, "caption": "Canoes on a lake."}]},
    "results": [{"image_id": 1, "caption": "a bus next to two buses."},
                {"image_id": 2, "caption": "a man with two ties and a tie."},
                {"image_id": 3, "caption": "three canoes and a canoe by a dog on the water."}],
}


def test_reference_exact_fixture_bus_ties_canoes():
    """Hand-derived with the reference's caption_to_words (pattern singularize per token):

    ground truth: 1 {bus} (instances; its caption's "bus" -> "bu" adds nothing), 2 {person}, 3 {} ("Canoes" ->
    "cano", no object; the default reads "canoe" -> boat, so 3 is {boat} there).
    reference: 1 "bus"->bu, "buses"->bus: 1 mention, 0 hallucinated; 2 man (person), "ties"->ty, tie: 2 mentions,
    tie hallucinated; 3 "canoes"->cano, canoe (boat, absent), dog: 2 mentions, 2 hallucinated.
    -> CHAIRi = 3/5 = 60.0, CHAIRs = 2/3.
    default: 1 bus, bus: 2, 0; 2 man, tie, tie: 3, 2; 3 canoe, canoe (boat, present), dog: 3, 1 -> CHAIRi 3/8.
    """
    data = BUS_TIES_CANOES
    ref = compute_chair(data["results"], gt_objects_from_coco(data["instances"], data["captions"], REF), REF)
    assert ref["num_mentions"] == 5 and ref["num_hallucinated_mentions"] == 3
    assert ref["CHAIRi"] == pytest.approx(60.0) and ref["CHAIRs"] == pytest.approx(200 / 3)
    assert [c["hallucinated"] for c in ref["per_caption"]] == [[], [["tie", "tie"]], [["canoe", "boat"], ["dog", "dog"]]]
    fixed = compute_chair(data["results"], gt_objects_from_coco(data["instances"], data["captions"], COCO), COCO)
    assert fixed["num_mentions"] == 8 and fixed["CHAIRi"] == pytest.approx(37.5)
    assert fixed["CHAIRs"] == pytest.approx(200 / 3)


INSTANCES = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
             "categories": [{"id": 18, "name": "dog"}, {"id": 62, "name": "chair"}],
             "annotations": [{"image_id": 1, "category_id": 18}, {"image_id": 3, "category_id": 62}]}
CAPTIONS = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
            "annotations": [{"image_id": 1, "caption": "A puppy on a couch."},
                            {"image_id": 2, "caption": "Two men waiting by a bus."},
                            {"image_id": 3, "caption": "An empty room."}]}


def test_gt_objects_from_coco_unions_instances_and_captions():
    assert gt_objects_from_coco(INSTANCES, CAPTIONS, COCO) == {
        1: {"dog", "couch"}, 2: {"person", "bus"}, 3: {"chair"}}
    assert gt_objects_from_coco(None, CAPTIONS, COCO) == {1: {"dog", "couch"}, 2: {"person", "bus"}, 3: set()}
    bad = {**INSTANCES, "categories": [{"id": 18, "name": "unicorn"}]}
    with pytest.raises(ValueError, match="unicorn"):
        gt_objects_from_coco(bad, CAPTIONS, COCO)


# --- evaluate module and CLI -------------------------------------------------------------------

@pytest.mark.slow  # a CLI subprocess
def test_chair_evaluate_module_loads_offline_and_matches_library():
    import evaluate

    chair = evaluate.load(str(REPO / "eval" / "metrics" / "chair"))
    preds = ["A cat and a cat on a sofa with a dog.", "A man in a bow tie next to the toilet seat."]
    out = chair.compute(predictions=preds, references=[["dog", "sofa"], ["toilet", "man"]])
    lib = compute_chair([{"image_id": i, "caption": p} for i, p in enumerate(preds)],
                        {0: {"dog", "couch"}, 1: {"toilet", "person"}}, COCO)
    for key in ("CHAIRs", "CHAIRi", "num_mentions", "mean_caption_length"):
        assert out[key] == pytest.approx(lib[key])
    shapes = chair.compute(predictions=["Two boxes, a ball and three crosses."], references=[["square", "circle"]],
                           synonyms=SHAPES.synonyms)
    assert shapes["CHAIRi"] == pytest.approx(100 / 3)
    # reference captions add the objects they name, as in the reference; reference_exact changes the singulariser
    data = BUS_TIES_CANOES
    preds = [r["caption"] for r in data["results"]]
    objects = [["bus"], ["person"], []]
    captions = [[a["caption"]] for a in data["captions"]["annotations"]]
    assert chair.compute(predictions=preds, references=objects, reference_captions=captions,
                         reference_exact=True)["CHAIRi"] == pytest.approx(60.0)
    assert chair.compute(predictions=preds, references=objects, reference_captions=captions)["CHAIRi"] == pytest.approx(37.5)
    # without the captions image 3's canoes are hallucinated too: 5 of 8
    assert chair.compute(predictions=preds, references=objects)["CHAIRi"] == pytest.approx(62.5)


def hallucination_here(capsys, argv):
    """`python eval/hallucination.py *argv` in this process (the same main(), without its imports): exit code,
    stdout, stderr. test_cli_end_to_end launches the real program."""
    from test_cli_fuzz import cli

    capsys.readouterr()
    try:
        cli("hallucination").main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out.out, out.err)


def _run_cli(tmp_path, *extra, capsys=None):
    results = [{"image_id": 1, "caption": "A dog and a cat on a couch."},
               {"image_id": 2, "caption": "A man next to a bus."}]
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "captions.json").write_text(json.dumps(CAPTIONS))
    (tmp_path / "instances.json").write_text(json.dumps(INSTANCES))
    argv = ["--results", str(tmp_path / "results.json"), "--captions", str(tmp_path / "captions.json"),
            "--out", str(tmp_path / "chair.json"), *extra]
    if capsys is not None:
        return hallucination_here(capsys, argv)
    return subprocess.run([sys.executable, str(REPO / "eval" / "hallucination.py"), *argv], capture_output=True,
                          text=True, env={**os.environ, **OFFLINE}, timeout=120)


def test_cli_end_to_end(tmp_path):
    proc = _run_cli(tmp_path, "--instances", str(tmp_path / "instances.json"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "chair.json").read_text())
    # image 1: dog, cat (hallucinated), couch; image 2: man, bus -> 1 of 5 mentions, 1 of 2 captions
    assert out["CHAIRs"] == pytest.approx(50.0) and out["CHAIRi"] == pytest.approx(20.0)
    assert out["per_caption"][0]["hallucinated"] == [["cat", "cat"]]
    assert "| CHAIRs | CHAIRi |" in proc.stdout


def test_cli_custom_synonyms_and_bad_json(tmp_path, capsys):
    (tmp_path / "synonyms.json").write_text(json.dumps({"dog": ["dog", "puppy"], "bus": ["bus"]}))
    proc = _run_cli(tmp_path, "--synonyms", str(tmp_path / "synonyms.json"), capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "chair.json").read_text())
    assert out["num_mentions"] == 2 and out["CHAIRi"] == 0.0  # only dog and bus are objects now

    (tmp_path / "synonyms.json").write_text("{not json")
    proc = _run_cli(tmp_path, "--synonyms", str(tmp_path / "synonyms.json"), capsys=capsys)
    assert proc.returncode != 0 and "synonyms.json" in proc.stderr and "not valid JSON" in proc.stderr


def test_cli_reference_exact(tmp_path, capsys):
    for name in ("instances", "captions", "results"):
        (tmp_path / f"{name}.json").write_text(json.dumps(BUS_TIES_CANOES[name]))
    argv = ["--results", str(tmp_path / "results.json"), "--captions", str(tmp_path / "captions.json"),
            "--instances", str(tmp_path / "instances.json"), "--out", str(tmp_path / "chair.json"), "--reference-exact"]
    proc = hallucination_here(capsys, argv)
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "chair.json").read_text())
    assert out["CHAIRi"] == pytest.approx(60.0) and out["mode"] == "reference-exact"
    (tmp_path / "synonyms.json").write_text(json.dumps({"dog": ["dog"]}))
    proc = hallucination_here(capsys, argv + ["--synonyms", str(tmp_path / "synonyms.json")])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --reference-exact reproduces the reference's COCO vocabulary; it cannot be combined with --synonyms"]


def test_blind_captions_take_another_images_reference_deterministically():
    from spark_vlm.metrics.caption_metrics import blind_captions

    refs = {1: ["a dog"], 2: ["a cat", "two cats"], 3: ["a bus"]}
    first = blind_captions(refs, [3, 1, 2], seed=7)
    assert first == blind_captions(refs, [1, 2, 3], seed=7)  # deterministic by seed, in image-id order
    assert [b["image_id"] for b in first] == [1, 2, 3]
    for b in first:
        assert b["caption"] not in refs[b["image_id"]]  # never the image's own reference
        assert any(b["caption"] in caps for caps in refs.values())
    draws = {tuple(b["caption"] for b in blind_captions(refs, [1, 2, 3], seed=s)) for s in range(20)}
    assert len(draws) > 1  # the seed matters
    with pytest.raises(ValueError, match="at least 2 images"):
        blind_captions({1: ["a dog"]}, [1])


def test_chair_blind_baseline_beside_the_model(tmp_path):
    from spark_vlm.evaluation.captioning import chair_report
    from spark_vlm.metrics.caption_metrics import blind_captions, references_from_coco

    results = [{"image_id": 1, "caption": "A dog and a cat on a couch."},
               {"image_id": 2, "caption": "A man next to a bus."}]
    for name, doc in (("results", results), ("captions", CAPTIONS), ("instances", INSTANCES)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    paths = [str(tmp_path / f"{n}.json") for n in ("results", "captions", "instances")]
    report = chair_report(*paths, blind_seed=3)
    model_only = chair_report(*paths)
    assert {k: report.result[k] for k in ("CHAIRs", "CHAIRi")} == {k: model_only.result[k] for k in ("CHAIRs", "CHAIRi")}
    blind = blind_captions(references_from_coco(CAPTIONS), [1, 2], 3)
    (tmp_path / "blind.json").write_text(json.dumps(blind))
    direct = chair_report(str(tmp_path / "blind.json"), *paths[1:]).result
    assert report.result["blind_baseline"]["CHAIRi"] == pytest.approx(direct["CHAIRi"])
    assert report.result["blind_baseline"]["CHAIRs"] == pytest.approx(direct["CHAIRs"])
    assert [r["captions"] for r in report.rows] == ["model", "blind baseline (seed 3)"]


def test_an_instances_file_that_is_not_an_object_is_one_clear_error():
    """Found by the CLI fuzz: an instances file holding just `0` was a TypeError, not a message."""
    captions = {"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": "a dog"}]}
    vocab = ChairVocabulary.from_synonyms({"dog": ["dog"]})
    for bad in (0, [1], "x"):
        with pytest.raises(ValueError, match="instances file i.json must be a COCO JSON object"):
            gt_objects_from_coco(bad, captions, vocab, instances_name="instances file i.json")

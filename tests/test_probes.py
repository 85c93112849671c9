"""SugarCrepe-style probes: bag-of-words types keep the words, every negative is false, every positive
true, text-only heuristics sit exactly at chance, only training words are used, construction is deterministic,
impossible probes are skipped and counted, and accuracy is scored."""
import re
from collections import Counter

import pytest

from spark_vlm.data.probes import (PROBE_TYPES, build_probes, coco_objects, heuristic_accuracy, phrase,
                                   probe_accuracy, scene_objects, stated_number)
from spark_vlm.data.scene_vocab import COLORS, PLURALS, SHAPES
from spark_vlm.data.scenes import SceneConfig, generate_scene
from spark_vlm.data.text import NUMBER_WORDS

SCENES = [generate_scene(SceneConfig(image_size=64), "test", i) for i in range(80)]
OBJECTS = {s["image_id"]: scene_objects(s) for s in SCENES}
ITEMS, SKIPPED = build_probes(OBJECTS, SHAPES, seed=0, max_count=SceneConfig.max_objects)
SHAPE_OF = {**{s: s for s in SHAPES}, **{PLURALS[s]: s for s in SHAPES}}


def parse_group(text: str) -> tuple[int, str, str]:
    """'two red circles' / 'a red circle' -> (count, colour, shape)."""
    number, color, noun = text.split()
    return (1 if number in ("a", "an") else NUMBER_WORDS.index(number) + 1), color, SHAPE_OF[noun]


def count_of(image_id: int, color: str, shape: str) -> int:
    return sum(o["color"] == color and o["name"] == shape for o in OBJECTS[image_id])


def test_every_type_is_built_and_skips_are_counted():
    by_type = Counter(it["type"] for it in ITEMS)
    assert set(by_type) == set(PROBE_TYPES)
    for t in PROBE_TYPES:  # each (image, type) is either an item or a counted skip
        assert by_type[t] + SKIPPED[t] == len(SCENES)
    assert all(it["chance"] == 1 / (1 + len(it["negatives"])) == 0.5 for it in ITEMS)
    assert all(it["positive"] not in it["negatives"] for it in ITEMS)


def test_bag_of_words_types_preserve_the_multiset_of_words():
    for it in ITEMS:
        if it["type"] in ("color_binding", "relation_swap"):
            assert Counter(it["negatives"][0].split()) == Counter(it["positive"].split()), it


def test_count_negative_never_matches_the_true_count():
    for it in (it for it in ITEMS if it["type"] == "count"):
        n, color, shape = parse_group(it["positive"])
        m, color2, shape2 = parse_group(it["negatives"][0])
        assert (color2, shape2) == (color, shape)
        assert n == count_of(it["image_id"], color, shape) != m


def test_color_binding_positive_true_and_swapped_pairs_absent():
    for it in (it for it in ITEMS if it["type"] == "color_binding"):
        for text, should_exist in ((it["positive"], True), (it["negatives"][0], False)):
            for part in text.split(" and "):
                n, color, shape = parse_group(part)
                assert (count_of(it["image_id"], color, shape) == n) == should_exist, (it, part)


def test_relation_swap_positive_true_negative_false():
    for it in (it for it in ITEMS if it["type"] == "relation_swap"):
        rel = "left of" if " left of " in it["positive"] else "above"
        boxes = {}
        for side in it["positive"].split(f" {rel} "):
            _, color, shape = parse_group(side)
            match = [o for o in OBJECTS[it["image_id"]] if o["color"] == color and o["name"] == shape]
            assert len(match) == 1  # unambiguous referent
            boxes[side] = match[0]["bbox"]
        (a, box_a), (b, box_b) = boxes.items()
        axis = 0 if rel == "left of" else 1
        assert box_a[axis] + box_a[axis + 2] <= box_b[axis]        # positive: a before b along the axis
        assert not box_b[axis] + box_b[axis + 2] <= box_a[axis]    # negative: b before a is false
        assert it["negatives"] == [f"{b} {rel} {a}"]


def test_absent_object_replaces_the_noun_with_an_absent_one():
    for it in (it for it in ITEMS if it["type"] == "absent_object"):
        n, color, shape = parse_group(it["positive"])
        m, color2, absent = parse_group(it["negatives"][0])
        assert (m, color2) == (n, color) and n == count_of(it["image_id"], color, shape)
        assert all(o["name"] != absent for o in OBJECTS[it["image_id"]])


def test_text_only_heuristics_sit_exactly_at_chance():
    """The shortcuts measured on the old probes (smaller number wins count 89.6%, shorter caption wins
    absent_object 100%) are balanced away: on every type both heuristics score exactly 50%."""
    for name, per_type in heuristic_accuracy(ITEMS).items():
        assert per_type == {t: 50.0 for t in PROBE_TYPES}, name
    pairs = Counter((stated_number(it["positive"]), stated_number(it["negatives"][0]))
                    for it in ITEMS if it["type"] == "count")
    assert pairs == Counter({(m, n): k for (n, m), k in pairs.items()})  # "two beats one" is at chance too
    assert len(pairs) >= 4 and sum(pairs.values()) >= 30  # the balance keeps a usable number of count items


def test_heuristics_see_an_unbalanced_set():
    """The control can fail: on the old, unbalanced construction it reports the shortcut."""
    old = [{"type": "count", "chance": 0.5, "positive": "one red circle", "negatives": ["two red circles"]},
           {"type": "absent_object", "chance": 0.5, "positive": "a red circle",
            "negatives": ["a red circle and a green star"]},
           {"type": "absent_object", "chance": 0.5, "positive": "a red ring", "negatives": ["a red star"]}]
    out = heuristic_accuracy(old)
    assert out["smaller_number_wins"] == {"count": 100.0, "absent_object": 75.0}  # the equal-number item: a tie
    assert out["shorter_wins"] == {"count": 100.0, "absent_object": 75.0}


def test_probes_use_only_words_of_the_training_captions():
    train = [generate_scene(SceneConfig(image_size=64), "train", i) for i in range(300)]
    seen = {w for s in train for c in s["captions"] for w in c.replace(",", " ").replace(":", " ").split()}
    used = {w for it in ITEMS for t in [it["positive"], *it["negatives"]] for w in t.split()}
    assert used <= seen, used - seen
    assert not used & set(NUMBER_WORDS[SceneConfig.max_objects:])  # never "seven"
    assert {"one", "two", "three"} <= used and set(COLORS) & used


def test_deterministic_and_seeded():
    again, skipped = build_probes(OBJECTS, SHAPES, seed=0, max_count=SceneConfig.max_objects)
    assert again == ITEMS and skipped == SKIPPED
    other, _ = build_probes(OBJECTS, SHAPES, seed=1, max_count=SceneConfig.max_objects)
    assert other != ITEMS


def test_single_object_skips_pair_probes_and_unbalanced_items():
    one = {7: [{"name": "circle", "color": "red", "bbox": [0, 0, 5, 5], "crowd": False}]}
    items, skipped = build_probes(one, ["circle", "square"])
    # "one red circle" vs "two red circles" has no mirror item ("two" true, "one" false): dropped, counted;
    # "a red circle" vs "a red square" needs none (same numbers, same length).
    assert [(it["positive"], it["negatives"]) for it in items] == [("a red circle", ["a red square"])]
    assert skipped == {"count": 1, "color_binding": 1, "relation_swap": 1, "absent_object": 0}
    two = {**one, 8: [{"name": "circle", "color": "red", "bbox": [10 * i, 0, 5, 5], "crowd": False}
                      for i in range(2)]}
    items, _ = build_probes(two, SHAPES, max_count=2)
    assert [(it["positive"], it["negatives"]) for it in items if it["type"] == "count"] == [
        ("one red circle", ["two red circles"]), ("two red circles", ["one red circle"])]
    with pytest.raises(ValueError, match="max_count"):
        build_probes(one, SHAPES, max_count=11)


def test_coco_instances_without_colours():
    instances = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
                 "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bus"}, {"id": 3, "name": "dog"}],
                 "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                                 {"image_id": 1, "category_id": 1, "bbox": [30, 0, 10, 10]},
                                 {"image_id": 1, "category_id": 2, "bbox": [60, 0, 10, 10]},
                                 {"image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 10]},
                                 {"image_id": 3, "category_id": 3, "bbox": [20, 0, 10, 10]}]}
    objects, names = coco_objects(instances)
    assert names == ["person", "bus", "dog"] and objects[2] == []
    items, skipped = build_probes(objects, names)
    assert skipped["color_binding"] == 3  # no colours
    assert all(len(it["positive"].split()) == len(it["negatives"][0].split()) for it in items)
    relations = [(it["positive"], it["negatives"]) for it in items if it["type"] == "relation_swap"]
    assert relations == [("a person left of a dog", ["a dog left of a person"])]
    assert phrase(2, None, "person") == "two people" and phrase(1, None, "bus", numeric=True) == "one bus"


def test_probe_accuracy_by_hand():
    items = [{"type": "count", "chance": 0.5}, {"type": "count", "chance": 0.5},
             {"type": "relation_swap", "chance": 0.5}]
    out = probe_accuracy(items, [0.9, 0.4, 0.3], [[0.1], [0.4], [0.2]])  # the tie counts as a miss
    assert out["per_type"]["count"] == {"accuracy": 50.0, "chance": 50.0, "num_items": 2}
    assert out["per_type"]["relation_swap"]["accuracy"] == 100.0
    assert out["mean_accuracy"] == pytest.approx(75.0)
    assert list(out["per_type"]) == ["count", "relation_swap"]
    assert probe_accuracy(items, [0.9, 0.4, 0.3], [[0.1], [0.4], [0.2]], tie_credit=0.5)["per_type"]["count"][
        "accuracy"] == 75.0


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("categories"), "inst.json must be a COCO JSON object with a 'categories' list"),
    (lambda d: d["annotations"][0].pop("bbox"), "inst.json: annotations[0] has no 'bbox'"),
    (lambda d: d["annotations"][0].update(category_id=99), "inst.json: annotations[0].category_id 99 is not a category"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2]), "inst.json: annotations[0].bbox is [1, 2]"),
    (lambda d: d["images"][0].update(id=[1]), "inst.json: images[0].id is [1]"),
])
def test_coco_objects_names_the_bad_entry(damage, message):
    from spark_vlm.data.probes import coco_objects

    doc = {"images": [{"id": 1}], "categories": [{"id": 3, "name": "dog"}],
           "annotations": [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4]}]}
    assert coco_objects(doc, "inst.json")[0] == {1: [{"name": "dog", "color": None, "bbox": [0, 0, 4, 4],
                                                      "crowd": False}]}
    damage(doc)
    with pytest.raises(ValueError, match=re.escape(message)):
        coco_objects(doc, "inst.json")

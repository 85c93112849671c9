"""SugarCrepe-style probes: bag-of-words types keep the words, every negative is false, every positive
true, construction is deterministic, impossible probes are skipped and counted, and accuracy is scored."""
from collections import Counter

import pytest

from spark_vlm.data.probes import (PROBE_TYPES, build_probes, coco_objects, phrase, probe_accuracy,
                                   scene_objects)
from spark_vlm.data.scene_vocab import PLURALS, SHAPES
from spark_vlm.data.scenes import SceneConfig, generate_scene
from spark_vlm.data.text import NUMBER_WORDS

SCENES = [generate_scene(SceneConfig(image_size=64), "test", i) for i in range(80)]
OBJECTS = {s["image_id"]: scene_objects(s) for s in SCENES}
ITEMS, SKIPPED = build_probes(OBJECTS, SHAPES, seed=0)
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


def test_absent_object_is_absent():
    for it in (it for it in ITEMS if it["type"] == "absent_object"):
        added = it["negatives"][0][len(it["positive"]) + len(" and "):]
        _, color, shape = parse_group(added)
        assert all(o["name"] != shape for o in OBJECTS[it["image_id"]])


def test_deterministic_and_seeded():
    again, skipped = build_probes(OBJECTS, SHAPES, seed=0)
    assert again == ITEMS and skipped == SKIPPED
    other, _ = build_probes(OBJECTS, SHAPES, seed=1)
    assert other != ITEMS and len(other) == len(ITEMS)  # same eligibility, different choices


def test_single_object_skips_pair_probes():
    one = {7: [{"name": "circle", "color": "red", "bbox": [0, 0, 5, 5], "crowd": False}]}
    items, skipped = build_probes(one, SHAPES)
    assert sorted(it["type"] for it in items) == ["absent_object", "count"]
    assert skipped == {"count": 0, "color_binding": 1, "relation_swap": 1, "absent_object": 0}
    assert [it["negatives"] for it in items if it["type"] == "count"] == [["two red circles"]]


def test_coco_instances_without_colours():
    instances = {"images": [{"id": 1}, {"id": 2}],
                 "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bus"}, {"id": 3, "name": "dog"}],
                 "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                                 {"image_id": 1, "category_id": 1, "bbox": [30, 0, 10, 10]},
                                 {"image_id": 1, "category_id": 2, "bbox": [60, 0, 10, 10]}]}
    objects, names = coco_objects(instances)
    assert names == ["person", "bus", "dog"] and objects[2] == []
    items, skipped = build_probes(objects, names)
    assert skipped["color_binding"] == 2 and skipped["count"] == 1  # no colours; image 2 has no objects
    texts = {it["type"]: (it["positive"], it["negatives"][0]) for it in items}
    assert texts["absent_object"][1].endswith("and a dog")
    assert phrase(2, None, "person") == "two people" and phrase(1, None, "bus", numeric=True) == "one bus"


def test_probe_accuracy_by_hand():
    items = [{"type": "count", "chance": 0.5}, {"type": "count", "chance": 0.5},
             {"type": "relation_swap", "chance": 0.5}]
    out = probe_accuracy(items, [0.9, 0.4, 0.3], [[0.1], [0.4], [0.2]])  # the tie counts as a miss
    assert out["per_type"]["count"] == {"accuracy": 50.0, "chance": 50.0, "num_items": 2}
    assert out["per_type"]["relation_swap"]["accuracy"] == 100.0
    assert out["mean_accuracy"] == pytest.approx(75.0)
    assert list(out["per_type"]) == ["count", "relation_swap"]

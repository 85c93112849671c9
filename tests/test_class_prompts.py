"""The bundled class names and template sets, and how class names and templates are chosen."""
import pytest

from spark_vlm.evaluation.class_prompts import (IMAGENET_CLASSNAMES, TEMPLATE_SETS, class_names_for, read_lines,
                                                resolve_templates)
from spark_vlm.evaluation.stage1_run import CLIP_TEMPLATES


def test_bundled_data_is_complete_and_names_its_source():
    templates, label = resolve_templates("imagenet80")
    assert len(templates) == 80 == len(set(templates)) and all(t.count("{}") == 1 for t in templates)
    assert templates[0] == "a bad photo of a {}." and templates[-1] == "a tattoo of the {}." and label.startswith("imagenet80")
    names = read_lines(IMAGENET_CLASSNAMES, "class-name")
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish" and names[-1] == "toilet paper"
    for path in (IMAGENET_CLASSNAMES, IMAGENET_CLASSNAMES.with_name("imagenet_templates.txt")):
        header = path.read_text(encoding="utf-8").split("\n", 5)[:5]
        assert any("open_clip" in line for line in header) and any("MIT" in line for line in header)
    assert resolve_templates(["clip7"]) == (CLIP_TEMPLATES, TEMPLATE_SETS["clip7"][1].join(["clip7: ", ""]))


def test_custom_templates_and_their_errors():
    assert resolve_templates(["a {}", "one {}"]) == (("a {}", "one {}"), "custom: 2 templates")
    with pytest.raises(ValueError, match="'a cat' needs exactly one {} .*imagenet80, clip7"):
        resolve_templates(["a cat"])
    with pytest.raises(ValueError, match="exactly one"):
        resolve_templates(["{} and {}"])


def test_class_names_from_folders_wordnet_ids_or_a_file(tmp_path):
    assert class_names_for(["blue_thing", "red"]) == (["blue thing", "red"], "folder names")
    wnids = [f"n{k:08d}" for k in range(1000)]
    names, source = class_names_for(wnids)
    assert source == "imagenet" and names[0] == "tench" and len(names) == 1000
    with pytest.raises(ValueError, match="3 class folders are WordNet ids.*--class-names"):
        class_names_for(wnids[:3])
    f = tmp_path / "names.txt"
    f.write_text("# my names\ngold fish\n\nshark\n", encoding="utf-8")
    assert class_names_for(["n01", "n02"], f) == (["gold fish", "shark"], str(f))
    with pytest.raises(ValueError, match="has 2 names but there are 3 class folders"):
        class_names_for(["a", "b", "c"], f)
    f.write_bytes(b"\xff\xfe bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        class_names_for(["a"], f)
    with pytest.raises(ValueError, match="cannot read class-name file"):
        class_names_for(["a"], tmp_path / "missing.txt")

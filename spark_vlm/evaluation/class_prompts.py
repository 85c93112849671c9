"""Class names and prompt-template sets for zero-shot classification, bundled as data or read from a file.

Bundled (spark_vlm/evaluation/data/, each file names its source and licence in its header):
  imagenet_templates.txt   CLIP's 80 ImageNet templates (open_clip's OPENAI_IMAGENET_TEMPLATES)
  imagenet_classnames.txt  the 1000 ImageNet-1k class names in class-index order (open_clip's IMAGENET_CLASSNAMES)

Class-index order is the sorted WordNet ids, which is also the order `read_class_folders` gives the folders of
an ImageNet-layout tree (n01440764, ...), so the i-th name names the i-th sorted folder.
"""
from __future__ import annotations

import re
from pathlib import Path

from .stage1_run import CLIP_TEMPLATES

DATA = Path(__file__).parent / "data"
IMAGENET_CLASSNAMES = DATA / "imagenet_classnames.txt"
WORDNET_ID = re.compile(r"n\d{8}")


def read_lines(path, what: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file, without `#` comment lines; ValueError naming the file if not."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read {what} file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} file {path} is not UTF-8 text (byte {e.start})") from e
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"{what} file {path} holds no entries")
    return lines


def _imagenet80() -> tuple[str, ...]:
    return tuple(read_lines(DATA / "imagenet_templates.txt", "template"))


# name -> (loader, description); the description goes into the report so a number says which ensemble made it
TEMPLATE_SETS = {
    "imagenet80": (_imagenet80, "CLIP's 80 ImageNet templates (open_clip OPENAI_IMAGENET_TEMPLATES)"),
    "clip7": (lambda: CLIP_TEMPLATES, "CLIP's 7-template subset (openai/CLIP Prompt_Engineering_for_ImageNet)"),
}


def resolve_templates(spec) -> tuple[tuple[str, ...], str]:
    """(templates, label) from one bundled set name (`imagenet80`, `clip7`) or a list of templates with {}."""
    spec = [spec] if isinstance(spec, str) else list(spec)
    if len(spec) == 1 and spec[0] in TEMPLATE_SETS:
        load, description = TEMPLATE_SETS[spec[0]]
        return tuple(load()), f"{spec[0]}: {description}"
    if not spec:
        raise ValueError("no templates given")
    for t in spec:
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} needs exactly one {{}} for the class name "
                             f"(or name one bundled set: {', '.join(TEMPLATE_SETS)})")
    return tuple(spec), f"custom: {len(spec)} templates"


def class_names_for(folders: list[str], class_names_file=None) -> tuple[list[str], str]:
    """(one readable name per sorted class folder, where the names came from).

    `class_names_file`: one name a line, line i naming folder i (sorted), or `imagenet` for the bundled names.
    Without one, 1000 WordNet-id folders get the bundled ImageNet names; other WordNet-id folders are an error
    (an id is no class name, and a subset cannot be matched by position); any other folder name is used with
    underscores as spaces.
    """
    if class_names_file is None and folders and all(WORDNET_ID.fullmatch(f) for f in folders):
        if len(folders) != 1000:
            raise ValueError(f"the {len(folders)} class folders are WordNet ids, not names: give --class-names "
                             f"FILE (one name a line, in the sorted folder order)")
        class_names_file = "imagenet"
    if class_names_file is None:
        return [f.replace("_", " ") for f in folders], "folder names"
    path = IMAGENET_CLASSNAMES if class_names_file == "imagenet" else class_names_file
    names = read_lines(path, "class-name")
    if len(names) != len(folders):
        raise ValueError(f"class-name file {path} has {len(names)} names but there are {len(folders)} "
                         f"class folders (one name a line, in the sorted folder order)")
    return names, str(class_names_file)

"""Checks of COCO-format JSON content: a bad entry raises one ValueError naming where it is and what is wrong
(instead of a KeyError 'bbox' or "unhashable type: 'list'" deep inside a metric)."""
from __future__ import annotations

from typing import Any


def check_id(value: Any, where: str) -> Any:
    """`value` if it can be an image/category id (an integer or a string), else a ValueError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where} is {value!r}; ids must be integers or strings")
    return value


def coco_entries(doc: Any, key: str, where: str, ids: tuple[str, ...] = (), strings: tuple[str, ...] = (),
                 others: tuple[str, ...] = ()) -> list[dict]:
    """`doc[key]` as a list of dicts, each with the id fields `ids` (integers or strings), the string fields
    `strings` and the fields `others` (any value). `where` names the file in the messages."""
    entries = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{where} must be a COCO JSON object with a {key!r} list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: {key}[{i}] must be a JSON object, not {type(entry).__name__}")
        for field in ids + strings + others:
            if field not in entry:
                raise ValueError(f"{where}: {key}[{i}] has no {field!r}")
        for field in ids:
            check_id(entry[field], f"{where}: {key}[{i}].{field}")
        for field in strings:
            if not isinstance(entry[field], str):
                raise ValueError(f"{where}: {key}[{i}].{field} is {entry[field]!r}; expected a string")
    return entries

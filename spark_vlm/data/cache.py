"""The on-disk cache: built-in scenes, SentencePiece models and stand-in LMs are made once, then reused.

An entry's name ends in a hash of everything that determines its content (settings and, where there is one,
the corpus), so a changed input never reuses a stale entry. An entry is written aside and renamed into place,
so a reader (another rank, a crashed run) never sees half of one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

CACHE_ROOT = Path(os.environ.get("SPARK_VLM_CACHE", Path.home() / ".cache" / "spark_vlm"))


def content_key(settings: dict, lines: Iterable[str] = ()) -> str:
    """16 hex digits of sha256 over the settings (as sorted JSON) and then each line of the corpus."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def build_once(path: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """`path` as it is when present; otherwise `build(tmp)` writes the file or folder `tmp`, renamed to `path`."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left over by a crashed run with the same pid
    build(tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another process published the same folder first: theirs has the same content
        shutil.rmtree(tmp, ignore_errors=True)
    return path

"""Images from file to model input: safe loading of real data (every image comes out as uint8 [H, W, 3] RGB,
or raises BadSample), and the pixel normalisation the models see (`to_pixel_values`).

Real image folders contain everything: grayscale and palette PNGs, RGBA with transparency, CMYK JPEGs
from print pipelines, 16-bit scans, phone photos stored sideways with an EXIF orientation tag, and
files that are empty, truncated by an interrupted download, or not images at all. `load_image`
normalises the good ones and turns every bad one into a `BadSample(path, reason)`; callers then
either stop (strict mode) or count it in a `SkipCounter` and carry on:

    counter = SkipCounter()
    try:
        image = load_image(path, image_size=224)
    except BadSample as exc:
        handle_bad(exc, counter, strict)       # raises when strict, else counts + logs
    ...
    print(counter.summary())

Captions are checked here too: empty or whitespace-only captions are dropped and counted
("empty caption"); an image left with no caption at all is skipped ("no caption").

Truncation is detected because PIL's global ImageFile.LOAD_TRUNCATED_IMAGES is False by default;
code that sets it to True makes PIL grey-fill truncated images silently instead.
"""
from __future__ import annotations

import io
import logging
import os
from collections import Counter

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

# Reasons, as they appear in SkipCounter.summary(); tests and users can match on them.
MISSING = "missing file"
ZERO_BYTES = "zero-byte file"
NOT_AN_IMAGE = "not an image"
TRUNCATED = "truncated file"
CORRUPT = "corrupt file"
TOO_LARGE = "image too large"
EMPTY_CAPTION = "empty caption"
NO_CAPTION = "no caption"


class BadSample(Exception):
    """A sample that cannot be used. `path` names the file (or tar key), `reason` is one short phrase."""

    def __init__(self, path, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"bad sample {self.path}: {reason}" + (f" ({detail})" if detail else ""))


class SkipCounter:
    """Counts skipped samples by reason and remembers (and logs) the first `max_examples` of them."""

    def __init__(self, max_examples: int = 5, what: str = "samples"):
        self.max_examples, self.what = max_examples, what
        self.counts: Counter[str] = Counter()
        self.examples: list[tuple[str, str]] = []        # (path, reason) of the first offenders

    def add(self, path, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((str(path), reason))
            log.warning("skipping %s: %s%s", path, reason, f" ({detail})" if detail else "")
            if len(self.examples) == self.max_examples:
                log.warning("further bad %s are counted but not logged", self.what)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return f"No bad {self.what} skipped."
        by_reason = ", ".join(f"{reason}: {n}" for reason, n in self.counts.most_common())
        first = "; ".join(f"{path} ({reason})" for path, reason in self.examples)
        return (f"Skipped {self.total} bad {self.what} ({by_reason}). "
                f"First {len(self.examples)}: {first}. "
                f"Pass strict=True to stop at the first bad sample instead.")


def handle_bad(exc: BadSample, counter: SkipCounter | None, strict: bool) -> None:
    """The one place that decides what a bad sample does: raise (strict) or count and continue."""
    if strict:
        raise exc
    if counter is not None:
        counter.add(exc.path, exc.reason, exc.detail)
    else:
        log.warning("skipping %s", exc)


def clean_captions(captions, path, counter: SkipCounter | None = None, strict: bool = False) -> list[str]:
    """Strip captions and drop empty ones (each counted as "empty caption"). May return [].

    A lone string is treated as one caption; None and non-strings count as empty.
    """
    if isinstance(captions, str):
        captions = [captions]
    kept = []
    for c in captions or []:
        text = c.strip() if isinstance(c, str) else ""
        if text:
            kept.append(text)
        else:
            handle_bad(BadSample(path, EMPTY_CAPTION, repr(c)), counter, strict)
    return kept


# ---------------------------------------------------------------------------------------------------
# Decoding


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, with transparency composited on white."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(np.asarray(img), mode)).convert("RGB")
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    if has_alpha:
        # P/L/RGB with a transparent colour, LA, PA, RGBa... all convert to straight RGBA first;
        # a transparent pixel then becomes white rather than whatever colour it happened to hide.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")        # L, 1, P, CMYK, YCbCr, LAB, HSV


def _high_depth_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """16-bit / 32-bit int / float single-channel pixels -> uint8, scaled (PIL's convert would clip).

    I;16*: the full 0..65535 range maps to 0..255 (divide by 257, so 65535 -> 255 exactly).
    I (32-bit int, e.g. 16-bit PNGs on older Pillow): treated as 16-bit when it fits 0..65535,
    else min-max scaled. F: treated as 0..1 when it fits, else min-max scaled.
    """
    a = a.astype(np.float64)
    if mode.startswith("I;16") or (mode == "I" and a.min() >= 0 and a.max() <= 65535):
        a = a / 257.0
    elif mode == "F" and a.min() >= 0 and a.max() <= 1:
        a = a * 255.0
    else:
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.clip(np.nan_to_num(np.rint(a)), 0, 255).astype(np.uint8)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """The CLIP preprocessing: bicubic-resize the shorter side to `size`, then center-crop size x size."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image(path_or_bytes, image_size: int | None = None, name: str | None = None) -> np.ndarray:
    """Decode an image file (path) or its bytes to uint8 [H, W, 3] RGB; optionally resize+crop to square.

    Raises BadSample(name or path, reason) for missing, zero-byte, corrupt, truncated or undecodable
    input. `name` is what error messages call the input (useful for bytes from a tar shard).
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        data = bytes(path_or_bytes)
        if not data:
            raise BadSample(name, ZERO_BYTES)
        source = io.BytesIO(data)
    else:
        name = name or str(path_or_bytes)
        if not os.path.isfile(path_or_bytes):
            raise BadSample(name, MISSING)
        if os.path.getsize(path_or_bytes) == 0:
            raise BadSample(name, ZERO_BYTES)
        source = path_or_bytes
    try:
        with Image.open(source) as img:
            img.load()                                  # decode every pixel now, so bad files fail here
            try:
                oriented = ImageOps.exif_transpose(img)
            except Exception as exc:                    # broken EXIF is metadata: keep the pixels
                log.debug("ignoring unreadable EXIF in %s: %s", name, exc)
                oriented = img
            rgb = _to_rgb(oriented)
            if image_size is not None:
                rgb = resize_center_crop(rgb, image_size)
            out = np.asarray(rgb, dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise BadSample(name, NOT_AN_IMAGE) from exc
    except Image.DecompressionBombError as exc:
        raise BadSample(name, TOO_LARGE, str(exc)) from exc
    except OSError as exc:
        reason = TRUNCATED if "truncated" in str(exc).lower() else CORRUPT
        raise BadSample(name, reason, str(exc)) from exc
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        # PIL's plugins report broken headers/chunks with several exception types.
        raise BadSample(name, CORRUPT, f"{type(exc).__name__}: {exc}") from exc
    if out.ndim != 3 or out.shape[2] != 3 or min(out.shape[:2]) == 0:
        raise BadSample(name, CORRUPT, f"decoded to shape {out.shape}")
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------------------------------------
# Model input

# Images are scaled to [-1, 1]: the encoders are trained from scratch, so no dataset statistics are needed.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


def blank_like(images: torch.Tensor) -> torch.Tensor:
    """The "no image content" input of the same shape: uniform grey pixels, or no objects (all-zero tokens)."""
    return torch.zeros_like(images) if images.is_floating_point() else torch.full_like(images, 128)


def to_pixel_values(images_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> normalised float [B, 3, H, W]. Done on the device, after collation (images travel
    as uint8, a quarter of the bytes). Float inputs are already features (the oracle tower's object tokens) and
    pass through, cast to `dtype`."""
    if images_uint8.is_floating_point():
        return images_uint8.to(dtype)
    x = images_uint8.permute(0, 3, 1, 2).to(dtype) / 255.0
    return (x - PIXEL_MEAN) / PIXEL_STD

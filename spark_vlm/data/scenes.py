"""Procedural scenes: images of simple coloured shapes with exact ground truth and true captions.

The project's default training/eval data (real datasets cannot be downloaded). A scene is a
pure function of (config.seed, split, index). Fine detail is measurable: every object has a
class, colour, size, visible mask and box, and every caption is TRUE about the scene (counts,
colours, sizes, left/right/above/below), so hallucinations are checkable.
Reading order: SceneConfig -> _shape_mask -> _background -> generate_scene -> make_captions
(scene_captions.py) -> SceneDataset (optional disk cache) -> cached_scenes (what the trainers use)
-> scenes_to_hf_dataset.
"""

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from spark_vlm.data.cache import CACHE_ROOT, build_once, content_key
from spark_vlm.data.scene_captions import make_captions
from spark_vlm.data.scene_vocab import COLORS, SHAPES, SIZES

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
IMAGE_ID_OFFSETS = {"train": 1_000_000, "val": 2_000_000, "test": 3_000_000}
BACKGROUNDS = ("solid", "gradient", "noise")


@dataclass(frozen=True)
class SceneConfig:
    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 6
    seed: int = 0
    captions_per_image: int = 5
    # Radii as fractions of the image side; small and large never overlap, so "small" and
    # "large" are unambiguous. A small object is ~12 px across at 64x64, still recognisable.
    small_radius: tuple[float, float] = (0.085, 0.105)
    large_radius: tuple[float, float] = (0.17, 0.20)
    max_rotation_deg: float = 12.0     # small tilt for variety; keeps square vs diamond distinct
    min_visible_frac: float = 0.5      # every object keeps >= this much of its own area visible
    repeat_prob: float = 0.3           # chance an object copies an earlier (colour, shape) -> counts > 1
    relation_margin: float = 0.15      # centres must differ by this fraction of the side for left/above
    synonym_prob: float = 0.25         # chance a shape/size word is a non-canonical synonym
    max_tries: int = 30                # position resamples before an object is dropped

    def __post_init__(self):
        if not 16 <= self.image_size <= 224:
            raise ValueError(f"image_size must be in [16, 224], got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 6, got "
                             f"{self.min_objects}, {self.max_objects}")
        if self.captions_per_image < 1:
            raise ValueError("captions_per_image must be >= 1")


# ----------------------------------------------------------------------------- geometry

@functools.lru_cache(maxsize=8)
def _grid(size: int):
    """Normalised pixel-centre coordinates: xs [1, W], ys [H, 1], both in (0, 1)."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size)
    return c[None, :], c[:, None]


_SQRT3 = np.float32(np.sqrt(3.0))
# Star edge from an outer tip (1, 0) to the next inner vertex, in a folded 36-degree sector.
_STAR_INNER = 0.45  # fatter than a regular pentagram (0.38) so small stars survive 64x64
_STAR_B = (_STAR_INNER * np.cos(np.pi / 5), _STAR_INNER * np.sin(np.pi / 5))


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Boolean [H, W] mask of a shape centred at (cx, cy) with radius r (all normalised).

    Each shape is defined in unit coordinates (p, q) inside the unit circle, so the same code
    works at any resolution. q points down (image convention), so "up" is negative q.
    """
    xs, ys = _grid(size)
    u, v = (xs - cx) / r, (ys - cy) / r
    ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    p, q = u * ca + v * sa, v * ca - u * sa           # rotate into the shape's frame
    ap, aq = np.abs(p), np.abs(q)
    if shape == "circle":
        return p * p + q * q <= 1.0
    if shape == "square":
        return np.maximum(ap, aq) <= 0.78
    if shape == "triangle":                            # apex up, centroid at the origin
        return (q <= 0.5) & (_SQRT3 * ap <= q + 1.0)
    if shape == "star":                                # fold angle into one 36-degree sector
        rho = np.sqrt(p * p + q * q)
        phi = np.mod(np.arctan2(q, p) + np.pi / 2, 2 * np.pi / 5)
        phi = np.minimum(phi, 2 * np.pi / 5 - phi)
        px, py = rho * np.cos(phi), rho * np.sin(phi)
        dx, dy = _STAR_B[0] - 1.0, _STAR_B[1]
        return dx * py - dy * (px - 1.0) >= 0       # same side of the edge as the centre
    if shape == "cross":
        return ((ap <= 0.3) & (aq <= 0.95)) | ((aq <= 0.3) & (ap <= 0.95))
    if shape == "diamond":
        return ap / 0.75 + aq <= 1.0
    if shape == "hexagon":
        return (aq <= _SQRT3 / 2) & (_SQRT3 * ap + aq <= _SQRT3)
    if shape == "ring":
        d2 = p * p + q * q
        return (d2 <= 1.0) & (d2 >= 0.55 ** 2)
    raise ValueError(f"unknown shape {shape!r}")


def _dilate(m: np.ndarray) -> np.ndarray:
    """Grow a mask by one pixel in all 8 directions (separable 3x3 box)."""
    p = np.pad(m, 1)
    rows = p[:-2] | p[1:-1] | p[2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]


# ----------------------------------------------------------------------------- backgrounds

def _muted_color(rng) -> np.ndarray:
    """A low-saturation mid-grey: far from the saturated object colours and from white/black."""
    return np.clip(rng.uniform(75, 180) + rng.uniform(-18, 18, size=3), 0, 255).astype(np.float32)


def _background(rng, size: int) -> tuple[np.ndarray, str]:
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    xs, ys = _grid(size)
    c1 = _muted_color(rng)
    if kind == "solid":
        return np.broadcast_to(c1, (size, size, 3)).copy(), kind
    c2 = _muted_color(rng)
    if kind == "gradient":                             # two colours along a random direction
        th = rng.uniform(0, 2 * np.pi)
        t = ((xs - 0.5) * np.cos(th) + (ys - 0.5) * np.sin(th)) / np.sqrt(2) + 0.5
    else:                                              # smooth value noise: bilinear upsample
        g = int(rng.integers(3, 7))
        grid = rng.uniform(0, 1, size=(g, g)).astype(np.float32)
        fx, fy = xs[0] * (g - 1), ys[:, 0] * (g - 1)
        x0, y0 = np.minimum(fx.astype(int), g - 2), np.minimum(fy.astype(int), g - 2)
        wx, wy = (fx - x0)[None, :], (fy - y0)[:, None]
        top = grid[y0][:, x0] * (1 - wx) + grid[y0][:, x0 + 1] * wx
        bot = grid[y0 + 1][:, x0] * (1 - wx) + grid[y0 + 1][:, x0 + 1] * wx
        t = top * (1 - wy) + bot * wy
    t = np.clip(np.broadcast_to(t, (size, size)), 0, 1)[..., None]
    return c1 * (1 - t) + c2 * t, kind


# ----------------------------------------------------------------------------- scenes

def generate_scene(config: SceneConfig, split: str, index: int) -> dict:
    """Render scene `index` of `split`; deterministic in (config.seed, split, index)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {tuple(SPLIT_CODES)}, got {split!r}")
    rng = np.random.default_rng([config.seed, SPLIT_CODES[split], index])
    S = config.image_size
    bg, bg_kind = _background(rng, S)
    n_target = int(rng.integers(config.min_objects, config.max_objects + 1))

    placed = []                                        # dicts with full + visible masks
    slots = 0
    while len(placed) < n_target and slots < 3 * n_target:   # bounded: drop and try a new object
        slots += 1
        if placed and rng.random() < config.repeat_prob:     # repeat a group so counts > 1 occur
            ref = placed[rng.integers(len(placed))]
            shape, color = ref["shape"], ref["color"]
        else:
            shape = SHAPES[rng.integers(len(SHAPES))]
            color = list(COLORS)[rng.integers(len(COLORS))]
        size = SIZES[rng.integers(2)]
        r = rng.uniform(*(config.small_radius if size == "small" else config.large_radius))
        angle = np.deg2rad(rng.uniform(-1, 1) * config.max_rotation_deg)
        for _ in range(config.max_tries):
            cx, cy = rng.uniform(1.1 * r, 1 - 1.1 * r, size=2)   # whole shape inside the image
            full = _shape_mask(shape, S, cx, cy, r, angle)
            # The new object is drawn on top: it may hide part of earlier ones, but never more
            # than (1 - min_visible_frac) of any earlier object's own area. Same-coloured objects
            # must not even touch, or two red circles would merge into one blob and be uncountable.
            grown = _dilate(full)
            # A shape too small to cover any pixel centre (tiny image sizes) is no object: try another position.
            if full.any() and all(np.count_nonzero(o["visible"] & ~full) >= config.min_visible_frac * o["full_area"]
                   and not (o["color"] == color and (grown & o["visible"]).any()) for o in placed):
                break
        else:
            continue                                   # no valid position: drop this object
        for o in placed:
            o["visible"] &= ~full
        placed.append(dict(shape=shape, color=color, size=size, visible=full.copy(),
                           full_area=int(np.count_nonzero(full)), full=full,
                           center=(float(cx * S), float(cy * S))))

    image = bg.astype(np.uint8)
    for o in placed:                                   # painter's order: later objects on top
        image[o["full"]] = COLORS[o["color"]]
    objects = []
    for o in placed:                                   # boxes/areas of the VISIBLE pixels (COCO xywh)
        m = o["visible"]
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        bbox = [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
        objects.append({"shape": o["shape"], "color": o["color"], "size": o["size"], "bbox": bbox,
                        "mask": m, "area": int(np.count_nonzero(m)), "center": o["center"]})
    captioned = make_captions(objects, bg_kind, config, rng)
    return {"image_id": IMAGE_ID_OFFSETS[split] + index, "split": split, "image": image,
            "captions": [c for c, _ in captioned], "caption_kinds": [k for _, k in captioned],
            "objects": objects, "background": bg_kind}


def without_pixels(scene: dict) -> dict:
    """A scene's JSON-able record: everything but the image and the object masks."""
    return {**{k: v for k, v in scene.items() if k not in ("image", "objects")},
            "objects": [{k: v for k, v in o.items() if k != "mask"} for o in scene["objects"]]}


# ----------------------------------------------------------------------------- torch dataset

_CACHE_VERSION = 2  # bump when generation changes so stale caches are not reused


class SceneDataset(torch.utils.data.Dataset):
    """Scenes `0..num_images-1` of `split`, generated on the fly (or from a disk cache).

    With cache_dir, all scenes are generated once and stored as images.npy (uint8 [N,H,W,3]),
    labels.npy (uint8 [N,H,W], 0 = background, k = object k-1; visible masks are disjoint so
    one label map holds them all) and meta.json, in a folder keyed by a hash of
    (config, split, num_images). Later runs memory-map the arrays instead of regenerating.
    """

    def __init__(self, split: str, num_images: int, config: SceneConfig = SceneConfig(),
                 cache_dir: str | None = None):
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {tuple(SPLIT_CODES)}, got {split!r}")
        self.split, self.num_images, self.config = split, num_images, config
        self.cache_path = None
        if cache_dir is not None:
            self.cache_path = str(build_once(os.path.join(cache_dir, f"scenes_{split}_{self.cache_key()}"),
                                             self._write_cache))
            self._images = np.load(os.path.join(self.cache_path, "images.npy"), mmap_mode="r")
            self._labels = np.load(os.path.join(self.cache_path, "labels.npy"), mmap_mode="r")
            with open(os.path.join(self.cache_path, "meta.json")) as f:
                self._meta = json.load(f)

    def cache_key(self) -> str:
        return content_key({"config": asdict(self.config), "split": self.split, "num_images": self.num_images,
                            "version": _CACHE_VERSION})

    def _write_cache(self, folder: Path) -> None:
        from tqdm import tqdm
        S = self.config.image_size
        images = np.zeros((self.num_images, S, S, 3), np.uint8)
        labels = np.zeros((self.num_images, S, S), np.uint8)
        meta = []
        for i in tqdm(range(self.num_images), desc=f"caching {self.split} scenes", leave=False):
            sc = generate_scene(self.config, self.split, i)
            images[i] = sc["image"]
            for k, o in enumerate(sc["objects"]):
                labels[i][o["mask"]] = k + 1
            meta.append(without_pixels(sc))
        folder.mkdir()
        np.save(folder / "images.npy", images)
        np.save(folder / "labels.npy", labels)
        with open(folder / "meta.json", "w") as f:
            json.dump(meta, f)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.num_images:
            raise IndexError(i)
        if self.cache_path is None:
            return generate_scene(self.config, self.split, i)
        rec, labels = self._meta[i], np.asarray(self._labels[i])
        objects = [{**o, "mask": labels == k + 1, "center": tuple(o["center"])}
                   for k, o in enumerate(rec["objects"])]
        return {**rec, "image": np.array(self._images[i]), "objects": objects}

    def meta(self, i: int) -> dict:
        """Scene `i` without its pixels and masks (captions, objects with class/colour/size/box/centre, background)."""
        if self.cache_path is None:
            return without_pixels(generate_scene(self.config, self.split, i))
        if not 0 <= i < self.num_images:
            raise IndexError(i)
        return self._meta[i]

    def arrays(self) -> tuple[np.ndarray, list[list[str]], list[int]]:
        """(images uint8 [N, S, S, 3], captions [N][captions_per_image], image_ids): what `CaptionedImages` takes."""
        if self.cache_path is not None:  # straight from the cache files: no masks rebuilt
            return (np.array(self._images), [list(r["captions"]) for r in self._meta],
                    [int(r["image_id"]) for r in self._meta])
        scenes = [self[i] for i in range(self.num_images)]
        return (np.stack([s["image"] for s in scenes]), [list(s["captions"]) for s in scenes],
                [int(s["image_id"]) for s in scenes])


def cached_scenes(split: str, num_images: int, image_size: int, min_objects: int = 1, max_objects: int = 6,
                  seed: int = 0, cache_dir: str | None = None) -> SceneDataset:
    """The trainers' scenes: generated once into `cache_dir` (default: the cache root's scenes/), then memory-mapped."""
    config = SceneConfig(image_size=image_size, min_objects=min_objects, max_objects=max_objects, seed=seed)
    return SceneDataset(split, num_images, config, cache_dir=cache_dir or str(CACHE_ROOT / "scenes"))


# ----------------------------------------------------------------------------- HF datasets

def scenes_to_hf_dataset(split: str, num_images: int, config: SceneConfig = SceneConfig()):
    """A `datasets.Dataset` with image (Image feature), image_id, captions, objects (no masks)."""
    import datasets
    from PIL import Image

    obj = {"shape": datasets.Value("string"), "color": datasets.Value("string"),
           "size": datasets.Value("string"), "bbox": datasets.List(datasets.Value("float32"), length=4),
           "area": datasets.Value("int64")}
    features = datasets.Features({"image": datasets.Image(), "image_id": datasets.Value("int64"),
                                  "captions": datasets.List(datasets.Value("string")),
                                  "objects": datasets.List(obj)})
    rows = []
    for i in range(num_images):
        sc = generate_scene(config, split, i)
        rows.append({"image": Image.fromarray(sc["image"]), "image_id": sc["image_id"],
                     "captions": sc["captions"],
                     "objects": [{k: o[k] for k in obj} for o in sc["objects"]]})
    return datasets.Dataset.from_list(rows, features=features)

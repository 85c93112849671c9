"""What the explorer page shows, as plain functions of a run pair and a picture (the server only routes JSON).

A `RunPair` is a stage-1 run (SPARK's token -> patch alignment of a typed caption) and a stage-2 run (the
captioner). A `Picture` is a built-in test scene (exact ground truth) or an uploaded file. For one pair and one
picture:
  caption()  the generated caption (greedy, beam or sampling), each word with an overlay of where it looked
             (evaluation/attribution.py: the xattn weights of the position that predicted the word's tokens,
             rolled out through the perceiver to the patches, or read directly with resampler=linear) and, on a
             scene, CHAIR's verdict on it
  align()    a typed caption's per-token SPARK alignment maps (evaluation/alignment.py)
  pope()     the POPE yes/no answer to "Is there a {object} in the image?" (evaluation/pope.py, zero-shot)
An oracle run (vision_checkpoint=oracle) reads a scene's object tokens, not pixels: its attribution is drawn per
object token (boxes), and it cannot caption an upload.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.coco_export import CATEGORIES, CATEGORY_IDS
from ..data.images import BadSample, load_image, to_pixel_values
from ..data.oracle_tokens import scene_tokens
from ..data.scene_vocab import SHAPE_SYNONYMS, SHAPES
from ..data.scenes import SceneConfig, generate_scene
from ..data.text import object_question
from ..evaluation.alignment import alignment_maps
from ..evaluation.attribution import word_patch_attribution
from ..evaluation.captioner import load_captioner
from ..evaluation.pope import answer_pope
from ..evaluation.stage1_run import load_stage1_run
from ..metrics.chair import ChairVocabulary, compute_chair, extract_objects, gt_objects_from_coco
from ..models.oracle_vision import OracleVision
from .render import box_overlay, data_url, enlarged, heat_overlay

NUM_SCENES = 500  # the demo's test split (make demo exports test scenes 0..499)
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # checked from the header, before anything is decoded
SCENE_VOCAB = ChairVocabulary.from_synonyms(SHAPE_SYNONYMS)  # what eval/hallucination.py uses on the scenes
DECODING = ("greedy", "beam", "sample")


@dataclass(frozen=True)
class Picture:
    """A built-in test scene (`scene` = its index) or the bytes of an uploaded image (`upload`)."""
    scene: int | None = None
    upload: bytes | None = None

    @classmethod
    def of_scene(cls, index) -> "Picture":
        if index == "random":
            index = random.randrange(NUM_SCENES)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < NUM_SCENES:
            raise ValueError(f"scene must be an index in 0..{NUM_SCENES - 1} or \"random\", got {index!r}")
        return cls(scene=index)

    @classmethod
    def of_upload(cls, data: bytes) -> "Picture":
        """Checks what can be checked without the model: size, a readable header, the pixel count, a full
        decode (truncated files fail here). Every failure is a ValueError with one readable sentence."""
        if not data:
            raise ValueError("the uploaded file is empty (0 bytes)")
        if len(data) > MAX_UPLOAD_BYTES:
            raise ValueError(f"the uploaded file is {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES}")
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height, kind = *img.size, img.format
        except Exception:  # PIL raises many types for a bad header; all mean the same to the user
            raise ValueError("the uploaded file is not an image PNG or JPEG can be read from") from None
        if kind not in ("PNG", "JPEG"):
            raise ValueError(f"the uploaded file is a {kind} image; upload a PNG or JPEG")
        if width * height > MAX_UPLOAD_PIXELS:
            raise ValueError(f"the uploaded image is {width}x{height} pixels; the limit is {MAX_UPLOAD_PIXELS}")
        picture = cls(upload=bytes(data))
        picture.pixels(16)
        return picture

    def pixels(self, size: int) -> np.ndarray:
        """uint8 [size, size, 3]: the scene rendered at `size`, or the upload resized and centre-cropped."""
        if self.scene is not None:
            return generate_scene(SceneConfig(image_size=size), "test", self.scene)["image"]
        try:
            return load_image(self.upload, size, name="the uploaded file")
        except BadSample as e:
            raise ValueError(f"the uploaded file cannot be used: {e.reason}") from None

    def truth(self, size: int = 64) -> dict | None:
        """A scene's objects and true captions (None for an upload)."""
        return None if self.scene is None else generate_scene(SceneConfig(image_size=size), "test", self.scene)


class RunPair:
    """A stage-1 run and a stage-2 run, loaded once."""

    def __init__(self, stage1: str | Path, stage2: str | Path, device: str = "cpu"):
        self.name = " + ".join("/".join(Path(run).resolve().parts[-2:]) for run in (stage1, stage2))
        self.spark, self.spark_tokenizer = load_stage1_run(stage1)
        self.captioner, self.prompts = load_captioner(stage2, device)
        self.oracle = isinstance(self.captioner.vision, OracleVision)
        self.image_size = self.captioner.vision.config.image_size

    def raw_input(self, picture: Picture) -> np.ndarray:
        """What the captioner reads of a picture: uint8 pixels [S, S, 3], or the oracle's float object tokens."""
        if not self.oracle:
            return picture.pixels(self.image_size)
        if picture.scene is None:
            raise ValueError(f"{self.name}: an oracle run reads a built-in scene's objects, not an uploaded image")
        scene = picture.truth(self.image_size)
        return scene_tokens(scene["objects"], scene["background"], self.image_size,
                            self.captioner.vision.config.max_objects)

    def model_input(self, picture: Picture) -> torch.Tensor:
        """The captioner's input [1, 1, ...] on its device."""
        device = next(self.captioner.parameters()).device
        return to_pixel_values(torch.from_numpy(self.raw_input(picture).copy())[None].to(device))[None]


def decoding_kwargs(options: dict) -> dict:
    """The page's decoding choice -> `SparkFlamingo.generate` keywords (a ValueError names a bad value)."""
    mode = options.get("mode", "greedy")
    if mode not in DECODING:
        raise ValueError(f"decoding mode must be one of {list(DECODING)}, got {mode!r}")
    kwargs = {"max_new_tokens": _number(options, "max_new_tokens", 20, int, 1, 64)}
    if mode == "beam":
        kwargs["num_beams"] = _number(options, "num_beams", 3, int, 2, 8)
    elif mode == "sample":
        kwargs.update(do_sample=True, temperature=_number(options, "temperature", 1.0, float, 0.05, 5.0),
                      generator=torch.Generator().manual_seed(_number(options, "seed", 0, int, 0, 2**31 - 1)))
    return kwargs


def _number(options: dict, key: str, default, kind, low, high):
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{key} must be in [{low}, {high}], got {value}")
    return kind(value)


def scene_objects(scene: dict) -> set[str]:
    """CHAIR's ground truth for one scene, built as eval/hallucination.py builds it from the exported COCO files:
    the instance categories and every object the true captions name (metrics/chair.py:gt_objects_from_coco)."""
    instances = {"images": [{"id": 0}], "categories": CATEGORIES,
                 "annotations": [{"image_id": 0, "category_id": CATEGORY_IDS[o["shape"]]} for o in scene["objects"]]}
    captions = {"images": [{"id": 0}], "annotations": [{"image_id": 0, "caption": c} for c in scene["captions"]]}
    return gt_objects_from_coco(instances, captions, SCENE_VOCAB)[0]


def _words(tokenizer, token_ids: list[int]) -> list[list[int]]:
    """Indices of the tokens of each word: a token starts a new word where the decoded text gains a space before
    it (this holds for byte-level BPE, SentencePiece and word-level tokenizers alike)."""
    words: list[list[int]] = []
    before = ""
    for i in range(len(token_ids)):
        text = tokenizer.decode(token_ids[:i + 1])
        added = text[len(before):] if text.startswith(before) else text
        if not words or added[:1].isspace():
            words.append([])
        words[-1].append(i)
        before = text
    return words


@torch.no_grad()
def caption(pair: RunPair, picture: Picture, options: dict | None = None) -> dict:
    """{"caption", "words": [{"text", "overlay", "object", "hallucinated"}], "chair", "attribution"}."""
    kwargs = decoding_kwargs(options or {})
    model, prompts = pair.captioner, pair.prompts
    px = pair.model_input(picture)
    prompt = prompts.generation_prompts(1)["input_ids"].to(px.device)
    new = model.generate(px, prompt, **kwargs)[0].tolist()
    stops = (prompts.end_id, prompts.tokenizer.eos_token_id, prompts.pad_id)
    kept = new[:next((i for i, t in enumerate(new) if t in stops), len(new))]
    text = prompts.decode(new)
    # Token k of the caption was predicted at position len(prompt) - 1 + k: that position's reading is its look.
    sequence = torch.cat([prompt, torch.tensor([kept], dtype=torch.long, device=px.device)], dim=1)
    looked = word_patch_attribution(model, px, sequence)["text_patches"][0, prompt.shape[1] - 1:-1]
    scene = picture.truth(pair.image_size)
    present = scene_objects(scene) if scene else None
    image = scene["image"] if scene is not None else picture.pixels(pair.image_size)
    words = []
    for group in _words(prompts.tokenizer, kept):
        word = prompts.tokenizer.decode([kept[i] for i in group]).strip()
        heat = looked[group].mean(0).numpy()
        mentions = extract_objects(word, SCENE_VOCAB)  # CHAIR's matching, one word at a time (the scene
        # vocabulary has no two-word names); the caption's own CHAIR numbers below come from compute_chair
        category = mentions[0][1] if mentions else None
        words.append({"text": word, "overlay": _overlay(pair, image, heat, scene), "object": category,
                      "hallucinated": None if present is None or category is None else category not in present})
    chair = None
    if present is not None:
        scored = compute_chair([{"image_id": 0, "caption": text}], {0: present}, SCENE_VOCAB)
        chair = {key: scored[key] for key in ("CHAIRs", "CHAIRi")} | {
            "hallucinated": scored["per_caption"][0]["hallucinated"], "truth": sorted(present)}
    route = ("word -> cross-attention latents -> perceiver -> patches"
             if pair.captioner.config.resampler == "perceiver" else "word -> cross-attention over the patches")
    attribution = ("per object token: each box is the share of the word's attention that reached that object"
                   if pair.oracle else f"per patch: {route}")
    return {"caption": text, "words": words, "chair": chair, "attribution": attribution}


def _overlay(pair: RunPair, image: np.ndarray, heat: np.ndarray, scene: dict | None) -> str:
    if pair.oracle:  # tokens: the scene's objects in order, zero rows, then the background
        objects = scene["objects"]
        return box_overlay(image, [o["bbox"] for o in objects], heat[:len(objects)].tolist(), float(heat[-1]))
    side = int(round(len(heat) ** 0.5))
    return heat_overlay(image, heat.reshape(side, side))


def typed_caption(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("type a caption to align")
    return text.strip()


def align(pair: RunPair, picture: Picture, text: str) -> list[dict]:
    """[{"token", "overlay"}]: SPARK's alignment weights of each token of `text` over the stage-1 patches."""
    image = picture.pixels(pair.spark.config.image_size)
    maps, names = alignment_maps(pair.spark, pair.spark_tokenizer, image, typed_caption(text))
    return [{"token": name, "overlay": heat_overlay(image, heat.numpy())} for name, heat in zip(names, maps)]


def pope(pair: RunPair, picture: Picture, name: str) -> dict:
    """{"question", "answer", "truth"}: the captioner's zero-shot yes/no (the likelihood rule of
    evaluation/pope.py) and, on a scene, whether such an object is there."""
    question = object_question(pope_object(name))
    inputs = {0: pair.raw_input(picture)}
    answer = answer_pope(pair.captioner, pair.prompts, [{"image_id": 0, "question": question}], [[]], inputs)[0]
    scene = picture.truth()
    truth = None if scene is None else ("yes" if name in scene_objects(scene) else "no")
    return {"question": question, "answer": answer, "truth": truth}


def pope_object(name) -> str:
    if name not in SHAPES:
        raise ValueError(f"object must be one of {list(SHAPES)}, got {name!r}")
    return name


def picture_view(picture: Picture) -> dict:
    """The page's view of the picture itself: the image at display size and, for a scene, its truth."""
    scene = picture.truth()
    image = scene["image"] if scene else picture.pixels(224)
    view = {"image": data_url(np.asarray(enlarged(image))), "scene": picture.scene}
    if scene:
        view["truth"] = {"objects": [f"{o['size']} {o['color']} {o['shape']}" for o in scene["objects"]],
                         "captions": scene["captions"]}
    return view

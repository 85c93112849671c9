"""A trained stage-1 run for evaluation: load it, and turn images, captions and class prompts into global
embeddings in fixed batches.

Everything runs under torch.no_grad on the CPU or the first GPU, in fixed batches and fixed order, so a repeated
run gives exactly the same numbers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ..data.images import to_pixel_values
from ..data.tokenizer import CaptionTokenizer
from ..losses import filip_similarity_chunked
from ..models.dual_encoder import SparkModel
from .report import check_batch_size

# CLIP's 7-template subset, chosen on ImageNet by the CLIP authors (openai/CLIP, notebooks/
# Prompt_Engineering_for_ImageNet.ipynb): a small, standard zero-shot ensemble.
CLIP_TEMPLATES = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                  "a {} in a video game.", "art of the {}.", "a photo of the small {}.")
# The built-in scenes' captions never say "photo"; these phrasings all occur in them.
SCENE_TEMPLATES = ("a {}", "one {}", "a picture of a {}")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_stage1_run(run_dir) -> tuple[SparkModel, CaptionTokenizer]:
    """(model in eval mode on `device()`, tokenizer) from a stage-1 run directory."""
    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir} is not a stage-1 run: no config.json (train with "
                                f"`spark_vlm.training.stage1` and pass its run directory)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "spark":
        raise ValueError(f"{run_dir} holds a {model_type!r} model, not a stage-1 SPARK dual encoder")
    if not ((run_dir / "tokenizer.model").is_file() or (run_dir / "tokenizer_config.json").is_file()):
        raise FileNotFoundError(f"{run_dir} has no tokenizer (tokenizer.model); the run is incomplete")
    model = SparkModel.from_pretrained(str(run_dir)).to(device()).eval()
    return model, CaptionTokenizer.load(run_dir)


def run_objective(run_dir) -> str:
    """The `loss` a stage-1 run was trained with (from its config.yaml), or "unknown"."""
    try:
        with open(Path(run_dir) / "config.yaml", encoding="utf-8") as f:
            return str((yaml.safe_load(f) or {}).get("loss", "unknown"))
    except (OSError, yaml.YAMLError):
        return "unknown"


def iter_pixel_batches(images: np.ndarray, batch_size: int, desc: str):
    """(start index, pixel_values on the model's device) for consecutive batches of uint8 images."""
    check_batch_size(batch_size)
    for start in tqdm(range(0, len(images), batch_size), desc=desc, total=math.ceil(len(images) / batch_size),
                      leave=False, mininterval=1.0):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
        yield start, to_pixel_values(batch.to(device()))


@torch.no_grad()
def image_embeddings(model, images: np.ndarray, batch_size: int = 64, desc: str = "encode images") -> torch.Tensor:
    """Normalised global image embeddings [N, D] (float32, CPU) of uint8 images [N, H, W, 3]."""
    out = [model.encode_image(px).float().cpu() for _, px in iter_pixel_batches(images, batch_size, desc)]
    return torch.cat(out) if out else torch.zeros(0, model.config.embed_dim)


@torch.no_grad()
def text_embeddings(model, tokenizer, texts: list[str], batch_size: int = 256,
                    desc: str = "encode texts") -> torch.Tensor:
    """Normalised global text embeddings [N, D] (float32, CPU); captions longer than max_text_len are cut."""
    check_batch_size(batch_size)
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False, mininterval=1.0):
        enc = tokenizer(list(texts[start:start + batch_size]), model.config.max_text_len)
        out.append(model.encode_text(enc["input_ids"].to(device()), enc["attention_mask"].to(device())).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.embed_dim)


def prompt_embeddings(model, tokenizer, names: list[str], templates, batch_size: int = 256) -> torch.Tensor:
    """Text embeddings [C, T, D] of every class name written into every template."""
    texts = [t.format(name) for name in names for t in templates]
    emb = text_embeddings(model, tokenizer, texts, batch_size, desc="encode prompts")
    return emb.reshape(len(names), len(templates), -1)


@torch.no_grad()
def filip_retrieval_similarity(model, tokenizer, images: np.ndarray, texts: list[str],
                               batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(image -> text, text -> image) late-interaction similarities, both [images, texts] (float32, CPU): how a
    FILIP run ranks (losses.filip_similarity)."""
    patches = torch.cat([model.patch_embeddings(px).float().cpu()
                         for _, px in iter_pixel_batches(images, batch_size, "encode patches")])
    tokens, masks = [], []
    for start in range(0, len(texts), 256):
        enc = tokenizer(list(texts[start:start + 256]), model.config.max_text_len)
        t, m = model.token_embeddings(enc["input_ids"].to(device()), enc["attention_mask"].to(device()))
        tokens.append(t.float().cpu())
        masks.append(m.cpu())
    return filip_similarity_chunked(patches, torch.cat(tokens), torch.cat(masks))

"""Trainable-only checkpoints of a SparkFlamingo: `trainable.safetensors` + `manifest.json` (+ `tokenizer/` for a
whole pretrained directory, `save_pretrained` / `load_pretrained`: what a stage-2 run directory holds).

The frozen vision tower and LM are never saved again; instead the manifest names where they came from and a
sha256 of their weights. Loading checks that the checkpoint holds exactly the trainable tensors (each present,
none extra, same shapes), that therefore exactly the frozen parts are missing, and refuses to attach the trained
parts to a different backbone than the one they were trained with.

Under DeepSpeed ZeRO-3 parameters are partitioned: hash/save/load on the gathered (unpartitioned) model, e.g.
inside `deepspeed.zero.GatheredParameters(model.parameters())`, or before `deepspeed.initialize`.

Every function takes the SparkFlamingo as its `model` argument: flamingo.py imports this module, never the reverse.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

FORMAT = "spark-flamingo-trainable/1"
WEIGHTS_NAME = "trainable.safetensors"
MANIFEST_NAME = "manifest.json"
TOKENIZER_DIR = "tokenizer"  # the LM's tokenizer with <image> and <|endofchunk|> added
FROZEN_PARTS = ("vision", "lm")


class BackboneMismatchError(ValueError):
    """The trainable checkpoint was trained on top of different frozen weights than the model it is loaded into."""


def hash_state_dict(module: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 over the sorted names, shapes, dtypes and raw bytes of a module's state dict (or of a mapping)."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
        # View as bytes so that dtypes numpy lacks (bfloat16) hash the same way as the others.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def ensure_not_partitioned(model: nn.Module, action: str) -> None:
    """ZeRO-3 leaves empty placeholders in the module; hashing or saving them would be silently wrong."""
    if any(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters()):
        raise RuntimeError(f"cannot {action} a ZeRO-3 partitioned model: wrap the call in "
                           f"`deepspeed.zero.GatheredParameters(list(model.parameters()))`")


def build_manifest(model: nn.Module, **extra) -> dict:
    ensure_not_partitioned(model, "hash")
    hashes = model.frozen_hashes()
    return {
        "format": FORMAT,
        "vision": {"source": model.vision_source, "sha256": hashes["vision"]},
        "lm": {"source": model.lm_source, "sha256": hashes["lm"],  # the dtype it was loaded in is part of the hash
               "dtype": str(model.lm.get_input_embeddings().weight.dtype).removeprefix("torch.")},
        "flamingo_config": model.config.to_dict(),
        "token_ids": {model.config.image_token: model.image_token_id,
                      model.config.end_of_chunk_token: model.eoc_token_id},
        **extra,
    }


def read_manifest(ckpt_dir: str) -> dict:
    with open(os.path.join(ckpt_dir, MANIFEST_NAME)) as f:
        return json.load(f)


def save_trainable(model: nn.Module, out_dir: str, manifest: dict | None = None) -> str:
    """Write the trainable tensors and the manifest. A given manifest is completed with the frozen parts' hashes
    (computed now); if it already states a hash, that hash must be the model's."""
    actual = build_manifest(model)
    manifest = {**actual, **(manifest or {})}
    for part in FROZEN_PARTS:
        entry = {**actual[part], **manifest[part]}
        if entry["sha256"] != actual[part]["sha256"]:
            raise BackboneMismatchError(f"manifest says the frozen {part} has sha256 {entry['sha256']}, but this "
                                        f"model's {part} hashes to {actual[part]['sha256']}")
        manifest[part] = entry
    return write_trainable(model.trainable_state_dict(), manifest, out_dir)


def write_trainable(state: Mapping[str, torch.Tensor], manifest: dict, out_dir: str) -> str:
    """The one writer of the two files (also used by stage 2 on weights gathered from every rank)."""
    os.makedirs(out_dir, exist_ok=True)
    state = {name: t.detach().cpu().contiguous() for name, t in state.items()}
    save_file(state, os.path.join(out_dir, WEIGHTS_NAME), metadata={"format": FORMAT})
    with open(os.path.join(out_dir, MANIFEST_NAME), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return out_dir


def check_backbones(saved: dict, actual_hashes: dict[str, str], ckpt_dir: str,
                    sources: dict[str, str] | None = None) -> None:
    for part in FROZEN_PARTS:
        if part not in saved or "sha256" not in saved[part]:
            raise BackboneMismatchError(f"{ckpt_dir}/{MANIFEST_NAME} does not record the frozen {part}'s hash")
        if saved[part]["sha256"] != actual_hashes[part]:
            source = f" (from {sources[part]!r})" if sources else ""
            raise BackboneMismatchError(
                f"frozen {part} mismatch: {ckpt_dir} was trained on the {part} from "
                f"{saved[part].get('source', '?')!r} (sha256 {saved[part]['sha256'][:16]}...), but this model's "
                f"{part}{source} has sha256 {actual_hashes[part][:16]}...; refusing to load")


def load_trainable(model: nn.Module, ckpt_dir: str, expected_manifest: dict | None = None) -> dict:
    """Load trainable weights into `model` after checking the backbones and the key set; returns the manifest.

    The model's own frozen hashes are always checked against the saved manifest. `expected_manifest` (optional)
    adds checks: each of its frozen-part hashes and each of its other top-level entries must equal the saved one.
    """
    ensure_not_partitioned(model, "load trainable weights into")
    saved = read_manifest(ckpt_dir)
    if saved.get("format") != FORMAT:
        raise ValueError(f"{ckpt_dir}: unknown checkpoint format {saved.get('format')!r}, expected {FORMAT!r}")
    check_backbones(saved, model.frozen_hashes(), ckpt_dir, {"vision": model.vision_source, "lm": model.lm_source})
    for key, value in (expected_manifest or {}).items():
        if key in FROZEN_PARTS:
            if "sha256" in value and value["sha256"] != saved[key]["sha256"]:
                raise BackboneMismatchError(f"frozen {key} mismatch: expected sha256 {value['sha256'][:16]}..., "
                                            f"{ckpt_dir} was trained with {saved[key]['sha256'][:16]}...")
        elif saved.get(key) != value:
            raise ValueError(f"manifest entry {key!r} differs: expected {value!r}, checkpoint has {saved.get(key)!r}")

    state = load_file(os.path.join(ckpt_dir, WEIGHTS_NAME))
    expected = {name: p.shape for name, p in model.named_trainable_parameters()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{n}: checkpoint {tuple(state[n].shape)} vs model {tuple(expected[n])}"
                   for n in sorted(set(state) & set(expected)) if state[n].shape != expected[n]]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"{ckpt_dir}/{WEIGHTS_NAME} does not match this model's trainable parameters:\n"
                         f"  missing: {missing}\n  unexpected: {unexpected}\n  wrong shape: {wrong_shape}")
    result = model.load_state_dict(state, strict=False)
    # What load_state_dict left untouched must be exactly the frozen backbone, nothing else.
    frozen = {n for n in model.state_dict() if not model.is_trainable_name(n)}
    if set(result.missing_keys) != frozen or result.unexpected_keys:
        raise ValueError(f"load left unexpected keys untouched: {sorted(set(result.missing_keys) ^ frozen)}, "
                         f"unexpected {result.unexpected_keys}")
    return saved


def save_pretrained(model: nn.Module, out_dir: str, manifest: dict | None = None) -> str:
    """A whole pretrained directory: trainable weights + manifest (frozen parts by path and hash) + the extended
    tokenizer in `tokenizer/`; the layout of a stage-2 run directory."""
    save_trainable(model, out_dir, manifest)
    model.tokenizer.save_pretrained(os.path.join(out_dir, TOKENIZER_DIR))
    return out_dir


def lm_dtype(manifest: dict) -> torch.dtype | str:
    """The dtype the frozen LM was trained in (its hash depends on it); "auto" (as saved) for manifests written
    before the dtype was recorded."""
    name = manifest["lm"].get("dtype")
    return getattr(torch, name) if name else "auto"


def load_pretrained(cls, ckpt_dir: str, vision_path: str | None = None, lm_path: str | None = None,
                    device: str | torch.device | None = None) -> nn.Module:
    """Rebuild a model saved by `save_pretrained` (or a stage-2 run): the frozen parts from the manifest's sources,
    or from `vision_path` / `lm_path` where they moved; the backbone hash check still runs against the manifest,
    so an override can only relocate the same weights. Returns the model in eval mode (on `device` if given)."""
    if not os.path.isfile(os.path.join(ckpt_dir, MANIFEST_NAME)):
        raise FileNotFoundError(f"{ckpt_dir} is not a stage-2 run directory (no {MANIFEST_NAME}); "
                                "train one with: accelerate launch stage2_vlm/train.py")
    manifest = read_manifest(ckpt_dir)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{ckpt_dir}: unknown checkpoint format {manifest.get('format')!r}, expected {FORMAT!r}")
    paths = {"vision": vision_path, "lm": lm_path}
    for part, flag in (("vision", "vision_path / --vision-checkpoint"), ("lm", "lm_path / --lm-path")):
        paths[part] = paths[part] or manifest[part]["source"]
        if not os.path.isdir(paths[part]):  # never let transformers read a missing path as a hub id
            raise FileNotFoundError(f"the frozen {part} of {ckpt_dir} is not at {paths[part]} (no such directory); "
                                    f"give its new place with {flag}")
    config = cls.config_class.from_dict(manifest["flamingo_config"])
    model = cls.from_pretrained_parts(config, paths["vision"], paths["lm"],
                                      tokenizer_path=os.path.join(ckpt_dir, TOKENIZER_DIR),
                                      lm_dtype=lm_dtype(manifest))
    load_trainable(model, ckpt_dir)
    model.eval()
    return model if device is None else model.to(device)

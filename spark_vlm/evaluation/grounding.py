"""Does a stage-1 model ground words in their own regions? Measured on the built-in scenes, whose objects all
have exact masks.

For every caption word that names a shape class or a colour present in the image (captions are true, so it is
present), the word's token-to-patch weights are scored against the union mask of the objects it names:
mass-in-mask and pointing (spark_vlm/metrics/grounding.py). The weights are SPARC's alignment readout
(`sparc_alignment`: inner products of the adapted token and patch embeddings, min-max normalised per token,
sparsified at 1/P, L1-renormalised), the same readout for a CLIP, FILIP or SPARK checkpoint, so the three
objectives are compared on one footing. A word split into several tokens uses the mean of their weights.

The model is read twice: as it is, and centred (each patch embedding minus its position's mean over the evaluated
images), which shows what lies under a per-position code and is the readout that `fine_centre_positions` trains.
Beside the model's numbers, what a model that does not look gets:
  uniform        weights 1/P (the object's share of the image; the chance a random patch touches it);
  any object     weights on every object's pixels alike, whatever the word names: what telling objects from the
                 background earns without grounding the word (a word-specific grounding must beat it);
  position-only  the same tokens against the *mean* patch embeddings of the evaluated images (each position's
                 average over images): what the position code alone points at;
  blank image    the same tokens against a uniform grey image's patches.
And the shortcut diagnostics: the fine-grained loss L_f with the matched image, another image, a blank image and
the position-only patch set (a grounding model needs L_f(matched) clearly below the other three); the share of the
patch embeddings' variance that position explains; the share of patches above the 1/P threshold.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..data.images import to_pixel_values
from ..losses import sparc_alignment, sparc_fine_grained_loss
from ..metrics.grounding import (any_object_baseline, mass_in_mask, named_words, patch_coverage, pointing_hit,
                                uniform_baseline)
from .data import builtin_scenes, scene_images
from .report import Report
from .stage1_run import device, iter_pixel_batches, load_stage1_run, run_objective

@torch.no_grad()
def _embed(model, tokenizer, scenes: list[dict], batch_size: int):
    """Patch embeddings [N, P, D] of the images, and per image its captions' token embeddings, masks and pieces."""
    patches, captions = [], []
    images = scene_images(scenes, model.config.image_size)
    for _, px in iter_pixel_batches(images, batch_size, "patch embeddings"):
        patches.append(model.patch_embeddings(px).float().cpu())
    for scene in scenes:
        enc = tokenizer(scene["captions"], model.config.max_text_len)
        ids, mask = enc["input_ids"].to(device()), enc["attention_mask"].to(device())
        tokens, token_mask = model.token_embeddings(ids, mask)
        pieces = [tokenizer.pieces(row[: int(m.sum())].tolist()) for row, m in zip(ids.cpu(), mask.cpu())]
        captions.append((tokens.float().cpu(), token_mask.cpu(), pieces))
    return torch.cat(patches), captions


@torch.no_grad()
def _blank_patches(model) -> torch.Tensor:
    s = model.config.image_size
    grey = torch.full((1, s, s, 3), 128, dtype=torch.uint8, device=device())
    return model.patch_embeddings(to_pixel_values(grey)).float().cpu()[0]


def _fine_loss(patches: torch.Tensor, captions, logit_scale: float) -> float:
    """Mean L_f over the images' captions, each image's captions against `patches[i]`."""
    losses = [sparc_fine_grained_loss(p[None].expand(len(t), -1, -1), t, m, logit_scale).item()
              for p, (t, m, _) in zip(patches, captions)]
    return float(np.mean(losses))


def grounding_report(checkpoint, num_images: int = 500, batch_size: int = 64) -> Report:
    """Mass-in-mask and pointing of the shape and colour words of the first `num_images` test scenes' captions,
    beside the uniform, position-only and blank-image baselines, plus the shortcut diagnostics."""
    if num_images < 2:
        raise ValueError(f"--num-images must be at least 2 (one image is compared with another), got {num_images}")
    model, tokenizer = load_stage1_run(checkpoint)
    cfg = model.config
    grid = cfg.image_size // cfg.patch_size
    scenes = builtin_scenes("test", num_images, cfg.image_size)
    patches, captions = _embed(model, tokenizer, scenes, batch_size)
    position_only = patches.mean(0)  # [P, D]: what every image shares at each position
    blank = _blank_patches(model)

    centred = patches - position_only  # the model without its position code (what fine_centre_positions trains)
    readouts = {"model": lambda i: patches[i], "model_centred": lambda i: centred[i],
                "position_only": lambda i: position_only, "blank_image": lambda i: blank}
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, scene in enumerate(scenes):
        tokens, token_mask, pieces = captions[i]
        weights = {name: sparc_alignment(patches_of(i)[None].expand(len(tokens), -1, -1), tokens, token_mask)[1].numpy()
                   for name, patches_of in readouts.items()}  # each [C, L, P]
        objects = patch_coverage(np.any([o["mask"] for o in scene["objects"]], axis=0), grid)
        for c, caption_pieces in enumerate(pieces):
            for kind, positions, coverage in named_words(caption_pieces, scene["objects"], grid):
                for key in ("all", kind):
                    for name, w in weights.items():
                        word_weights = w[c, positions].mean(0)
                        sums[key][f"{name}.mass_in_mask"].append(mass_in_mask(word_weights, coverage))
                        sums[key][f"{name}.pointing"].append(float(pointing_hit(word_weights, coverage)))
                    for name, (mass, pointing) in (("uniform", uniform_baseline(coverage)),
                                                   ("any_object", any_object_baseline(coverage, objects))):
                        sums[key][f"{name}.mass_in_mask"].append(mass)
                        sums[key][f"{name}.pointing"].append(pointing)

    result = {"checkpoint": str(checkpoint), "objective": run_objective(checkpoint),
              "data": f"built-in scenes, test split, {len(scenes)} images", "readout": "sparc_alignment weights"}
    for key, values in sums.items():
        result[key] = {"words": len(values["model.pointing"]),
                       **{name: 100.0 * float(np.mean(v)) for name, v in sorted(values.items())}}
    result["shortcut"] = shortcut_diagnostics(patches, captions, position_only, blank, float(model.logit_scale.detach()))
    rows = [{"words": f"{key} ({result[key]['words']})", "measure": measure,
             **{name: result[key][f"{name}.{measure}"]
                for name in ("model", "model_centred", "uniform", "any_object", "position_only", "blank_image")}}
            for key in ("all", "shape", "colour") if key in result for measure in ("mass_in_mask", "pointing")]
    return Report("Grounding: words -> their objects' masks (%)", result, rows)


def shortcut_diagnostics(patches: torch.Tensor, captions, position_only: torch.Tensor, blank: torch.Tensor,
                         logit_scale: float) -> dict:
    """L_f with the matched / another / blank image and the position-only patches; position's share of the patch
    variance; the share of patches that pass the 1/P threshold."""
    n = len(patches)
    other = patches.roll(1, dims=0)  # image i's captions against image i-1
    centred = patches - patches.mean((0, 1), keepdim=True)
    by_position = patches.mean(0, keepdim=True) - patches.mean((0, 1), keepdim=True)
    kept = []
    for p, (t, m, _) in zip(patches, captions):
        w = sparc_alignment(p[None].expand(len(t), -1, -1), t, m)[1]
        kept.append(((w > 0).float().sum(-1)[m.bool()] / w.shape[-1]).mean().item())
    return {
        "fine_loss_matched": _fine_loss(patches, captions, logit_scale),
        "fine_loss_other_image": _fine_loss(other, captions, logit_scale),
        "fine_loss_blank_image": _fine_loss(blank[None].expand(n, -1, -1), captions, logit_scale),
        "fine_loss_position_only": _fine_loss(position_only[None].expand(n, -1, -1), captions, logit_scale),
        "position_variance_share": float(by_position.pow(2).sum() * n / centred.pow(2).sum()),
        "patches_kept_frac": float(np.mean(kept)),
    }

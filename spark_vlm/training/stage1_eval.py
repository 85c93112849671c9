"""The held-out evaluation run during stage-1 training: retrieval R@K plus SPARK alignment diagnostics; on the
built-in scenes also retrieval per caption kind and truth-aware (a hit on any image the caption is true of), each
beside its perfect-model ceiling (spark_vlm/metrics/retrieval_truth.py).

The diagnostics exist because a near-zero fine-grained loss alone proves nothing: with random features most
patches pass the 1/P threshold, and a token can "match" its grouped embedding without being grounded. So we
report how sparse the alignment is, how peaked (entropy), and the fine-grained loss with the *wrong* image
next to the right one: only a clear gap says the words are tied to their own image's regions.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..data.images import to_pixel_values
from ..data.pairs import CaptionedImages
from ..losses import filip_similarity_chunked, sparc_alignment, sparc_fine_grained_loss
from ..data.scene_truth import truth_matrix
from ..data.scenes import cached_scenes
from ..metrics.grounding import mass_in_mask, named_words, pointing_hit, uniform_baseline
from ..metrics.retrieval import retrieval_recall, two_way
from ..metrics.retrieval_truth import truth_aware_recall

GROUNDING_SCENES = 32  # held-out scenes whose words are scored against their masks at each evaluation (cheap)


def _held_out_scenes(d, image_size: int):
    return cached_scenes("val", d.num_val, image_size, d.min_objects, d.max_objects, d.seed, d.cache_dir)


def held_out_truth(d, image_size: int) -> dict | None:
    """For `data.kind=scenes`: {truth [images, captions] bool, kinds [captions]} of the held-out scenes, in the
    order of the held-out CaptionedImages (scene by scene, caption by caption); None for other data."""
    if d.kind != "scenes":
        return None
    val = _held_out_scenes(d, image_size)
    scenes = [val[i] for i in range(len(val))]
    captions = [c for s in scenes for c in s["captions"]]
    kinds = [k for s in scenes for k in s["caption_kinds"]]
    margin = val.config.relation_margin * val.config.image_size
    return {"truth": truth_matrix(captions, kinds, scenes, margin), "kinds": kinds}


def grounding_set(d, data: CaptionedImages, tokenizer, image_size: int, patch_size: int,
                  num_scenes: int = GROUNDING_SCENES) -> dict | None:
    """For `data.kind=scenes`: the shape and colour words of the first `num_scenes` held-out scenes' captions, each
    as (caption row of `data`, token positions, patch coverage of the objects it names); None for other data.
    Parsed once, so that each periodic evaluation only computes the alignment weights."""
    if d.kind != "scenes":
        return None
    val = _held_out_scenes(d, image_size)
    n = min(num_scenes, len(val))
    words = []
    for i in range(n):
        objects = val[i]["objects"]
        for row in range(data.offsets[i], data.offsets[i + 1]):
            pieces = tokenizer.pieces(data.input_ids[row][data.attention_mask[row]].tolist())
            words += [(row, positions, coverage)
                      for _, positions, coverage in named_words(pieces, objects, image_size // patch_size)]
    return {"num_images": n, "words": words}


@torch.no_grad()
def grounding_scores(model, data: CaptionedImages, grounding: dict, device) -> dict[str, float]:
    """Mass-in-mask and pointing (%) of the words of `grounding_set` on their objects, beside uniform weights'
    (spark_vlm/evaluation/grounding.py has the full protocol with the position-only and blank-image baselines)."""
    n = grounding["num_images"]
    rows = int(data.offsets[n])  # the captions of the first n images are the first rows
    patches = model.patch_embeddings(to_pixel_values(data.images[:n].to(device)))
    tokens, token_mask = model.token_embeddings(data.input_ids[:rows].to(device), data.attention_mask[:rows].to(device))
    own_image = torch.as_tensor(data.caption_image[:rows], device=patches.device)
    weights = sparc_alignment(patches[own_image], tokens, token_mask)[1].cpu().numpy()  # [rows, L, P]
    scores = np.array([(mass_in_mask(weights[row, positions].mean(0), coverage),
                        pointing_hit(weights[row, positions].mean(0), coverage), *uniform_baseline(coverage))
                       for row, positions, coverage in grounding["words"]], dtype=float).reshape(-1, 4)
    names = ("mass_in_mask", "pointing", "mass_in_mask_uniform", "pointing_uniform")
    return {"grounding_words": float(len(scores)),
            **{f"grounding_{name}": 100.0 * float(v) for name, v in zip(names, scores.mean(0))}}


def truth_scores(similarity, data: CaptionedImages, truth: dict) -> dict[str, float]:
    """Flat keys for the log: overall truth-aware R@1 (both ways) and the text->image R@1 ceiling, then per kind
    "<kind>/text_to_image_R@1", "<kind>/truth_R@1" and their ceilings."""
    if truth["truth"].shape != tuple(similarity.shape):
        raise ValueError(f"the held-out ground truth covers {truth['truth'].shape}, the similarity is "
                         f"{tuple(similarity.shape)}")
    by_kind = truth_aware_recall(similarity, truth["truth"], data.caption_image, truth["kinds"])
    overall = by_kind.pop("all")
    out = {"text_to_image_R@1_ceiling": overall["R@1_ceiling"], "truth_R@1": overall["truth_R@1"],
           "truth_R@1_ceiling": overall["truth_R@1_ceiling"], "truth_R@1_chance": overall["truth_R@1_chance"],
           "image_to_text_truth_R@1": overall["i2t_truth_R@1"]}
    for kind, r in by_kind.items():
        out.update({f"{kind}/text_to_image_R@1": r["R@1"], f"{kind}/text_to_image_R@1_ceiling": r["R@1_ceiling"],
                    f"{kind}/truth_R@1": r["truth_R@1"], f"{kind}/truth_R@1_ceiling": r["truth_R@1_ceiling"]})
    return out


@torch.no_grad()
def encode_pairs(model, data: CaptionedImages, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised global embeddings of every image and every caption of `data`."""
    images, texts = [], []
    for start in range(0, len(data.images), batch_size):
        px = to_pixel_values(data.images[start:start + batch_size].to(device))
        images.append(model.encode_image(px).float())
    for start in range(0, len(data.input_ids), batch_size):
        ids = data.input_ids[start:start + batch_size].to(device)
        mask = data.attention_mask[start:start + batch_size].to(device)
        texts.append(model.encode_text(ids, mask).float())
    return torch.cat(images), torch.cat(texts)


@torch.no_grad()
def alignment_diagnostics(model, data: CaptionedImages, device, num_pairs: int = 256) -> dict[str, float]:
    """Sparsity, entropy and matched-vs-shuffled fine-grained loss on the first `num_pairs` held-out pairs."""
    n = min(num_pairs, len(data))
    idx = [data.offsets[i] for i in range(n)]  # each image's first caption
    px = to_pixel_values(data.images[:n].to(device))
    ids, mask = data.input_ids[idx].to(device), data.attention_mask[idx].to(device)
    patches = model.patch_embeddings(px)
    tokens, token_mask = model.token_embeddings(ids, mask)
    _, weights = sparc_alignment(patches, tokens, token_mask)
    real = token_mask
    kept = (weights > 0).float().sum(-1) / weights.shape[-1]  # fraction of patches kept, per token
    entropy = -(weights.clamp_min(1e-12).log() * weights).sum(-1)  # nats, per token
    scale = model.logit_scale
    s = model.config.image_size
    blank = model.patch_embeddings(to_pixel_values(torch.full((1, s, s, 3), 128, dtype=torch.uint8, device=device)))
    position_only = patches.mean(0, keepdim=True)  # what every image shares at each position
    centred = patches - patches.mean((0, 1), keepdim=True)

    def fine_loss(p) -> float:
        return sparc_fine_grained_loss(p.expand_as(patches), tokens, token_mask, scale).item()

    return {
        "patches_kept_frac": kept[real].mean().item(),
        "align_entropy": entropy[real].mean().item(),
        "align_entropy_uniform": math.log(weights.shape[-1]),  # the entropy of spreading over all patches
        # L_f with the right image, a wrong one, a blank one and the position code alone: grounding needs the
        # first clearly below the other three (a per-position code that any image reproduces wins L_f too).
        "fine_loss_matched": fine_loss(patches),
        "fine_loss_shuffled": fine_loss(patches.roll(1, dims=0)),
        "fine_loss_blank_image": fine_loss(blank),
        "fine_loss_position_only": fine_loss(position_only),
        "position_variance_share": ((position_only - patches.mean((0, 1), keepdim=True)).pow(2).sum() * n
                                    / centred.pow(2).sum()).item(),
    }


@torch.no_grad()
def late_interaction_pairs(model, data: CaptionedImages, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP's (image -> text, text -> image) similarities [images, captions] of `data` (losses.filip_similarity)."""
    patches, tokens, masks = [], [], []
    for start in range(0, len(data.images), batch_size):
        patches.append(model.patch_embeddings(to_pixel_values(data.images[start:start + batch_size].to(device))).float())
    for start in range(0, len(data.input_ids), batch_size):
        t, m = model.token_embeddings(data.input_ids[start:start + batch_size].to(device),
                                      data.attention_mask[start:start + batch_size].to(device))
        tokens.append(t.float())
        masks.append(m)
    return filip_similarity_chunked(torch.cat(patches), torch.cat(tokens), torch.cat(masks))


@torch.no_grad()
def evaluate_stage1(model, data: CaptionedImages, device, batch_size: int = 256,
                    truth: dict | None = None, grounding: dict | None = None,
                    late_interaction: bool = False) -> dict[str, float]:
    """Retrieval R@K, the alignment diagnostics, with `truth` (held_out_truth) the truth-aware scores, with
    `grounding` (grounding_set) the words' mass-in-mask and pointing. `late_interaction` (a FILIP run) ranks by
    FILIP's own similarities instead of the global embeddings, which its loss never trains."""
    if late_interaction:
        i2t, t2i = late_interaction_pairs(model, data, batch_size, device)
    else:
        img, txt = encode_pairs(model, data, batch_size, device)
        with torch.autocast(device_type=img.device.type, enabled=False):
            i2t = t2i = img.float() @ txt.float().t()  # fp32 even under bf16 autocast: ranks are sensitive
    result = two_way(retrieval_recall, i2t, t2i, data.caption_image)
    if truth is not None:
        result.update(truth_scores(t2i.cpu(), data, truth))
        if i2t is not t2i:  # its image -> text number from the image -> text similarity
            result["image_to_text_truth_R@1"] = truth_scores(i2t.cpu(), data, truth)["image_to_text_truth_R@1"]
    result.update(alignment_diagnostics(model, data, device))
    if grounding is not None and grounding["words"]:
        result.update(grounding_scores(model, data, grounding, device))
    result["logit_scale"] = model.logit_scale.item()
    return result

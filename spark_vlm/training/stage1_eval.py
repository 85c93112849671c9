"""The held-out evaluation run during stage-1 training: retrieval R@K plus SPARK alignment diagnostics.

The diagnostics exist because a near-zero fine-grained loss alone proves nothing: with random features most
patches pass the 1/P threshold, and a token can "match" its grouped embedding without being grounded. So we
report how sparse the alignment is, how peaked (entropy), and the fine-grained loss with the *wrong* image
next to the right one: only a clear gap says the words are tied to their own image's regions.
"""
from __future__ import annotations

import math

import torch

from ..data.images import to_pixel_values
from ..data.pairs import CaptionedImages
from ..losses import sparc_alignment, sparc_fine_grained_loss
from ..metrics.retrieval import retrieval_recall


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
    matched = sparc_fine_grained_loss(patches, tokens, token_mask, scale)
    shuffled = sparc_fine_grained_loss(patches.roll(1, dims=0), tokens, token_mask, scale)  # wrong image
    return {
        "patches_kept_frac": kept[real].mean().item(),
        "align_entropy": entropy[real].mean().item(),
        "align_entropy_uniform": math.log(weights.shape[-1]),  # the entropy of spreading over all patches
        "fine_loss_matched": matched.item(),
        "fine_loss_shuffled": shuffled.item(),
    }


@torch.no_grad()
def evaluate_stage1(model, data: CaptionedImages, device, batch_size: int = 256) -> dict[str, float]:
    img, txt = encode_pairs(model, data, batch_size, device)
    with torch.autocast(device_type=img.device.type, enabled=False):
        similarity = img.float() @ txt.float().t()  # fp32 even under bf16 autocast: ranks are sensitive
    result = retrieval_recall(similarity, data.caption_image)
    result.update(alignment_diagnostics(model, data, device))
    result["logit_scale"] = model.logit_scale.item()
    return result

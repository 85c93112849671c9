"""Stage-1 objectives: CLIP (global), FILIP (late interaction) and SPARK/SPARC (global + fine-grained).

Specification: docs/sparc_method.md (Bica et al. 2024, Eqs. 1-7). Conventions used everywhere:
  patch_embeds [B, P, D]  adapted, un-normalised patch embeddings  v_p = g_v(f_v(x)_p)
  token_embeds [B, L, D]  adapted, un-normalised token embeddings  t_l = g_t(f_t(y)_l)
  token_mask   [B, L]     bool, True = real token
  logit_scale             1/tau, a float or 0-dim tensor (the model clamps it at 100)
Image side first, as in `clip_loss`.

The batch-negative losses (CLIP, FILIP) gather embeddings from every process *with gradient* in one place,
`gather_with_grad`, and each rank scores its local rows against the global batch (open_clip's
local-loss + gather-with-grad scheme). With DDP's gradient averaging, N processes x batch b then give the
same loss value and gradients as one process with batch N*b. The fine-grained SPARC loss is computed
inside each image-caption pair, so it needs no communication at all.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "clip_loss",
    "filip_loss",
    "sparc_alignment",
    "sparc_fine_grained_loss",
    "sparc_loss",
    "gather_with_grad",
    "caption_word_idf",
    "caption_word_loss",
]


# --------------------------------------------------------------------------------------------- distributed
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from all processes along dim 0, keeping the autograd graph to every rank's slice.

    torch.distributed.nn.all_gather's backward all-reduces the incoming gradients, so each rank receives the
    gradient that *all* ranks' losses put on its own embeddings. A single process returns `x` unchanged.
    """
    _, world = _world()
    if world == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return _ContiguousGrad.apply(torch.cat(dist_fn.all_gather(x.contiguous()), dim=0))


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous. all_gather's backward (at least on
    gloo) scatters a non-contiguous gradient, e.g. one coming out of an einsum, to the wrong rows;
    tests/test_losses.py::test_gather_with_grad_distributed_backward pins this down."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    _, world = _world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _local_labels(local_batch: int, device: torch.device) -> torch.Tensor:
    # Row i of this rank is column (rank * b + i) of the gathered batch.
    rank, _ = _world()
    return torch.arange(local_batch, device=device) + rank * local_batch


# --------------------------------------------------------------------------------------------- CLIP
def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale,
              negative_text_embeds: torch.Tensor | None = None, has_negative: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarity (Eq. 1). Inputs [B, D], un-normalised; returns a scalar.

    Hard negatives (NegCLIP): `negative_text_embeds` [B, D] are extra text columns of the image -> text softmax
    (every image meets every negative of the batch, as NegCLIP appends them to the text batch); rows whose
    `has_negative` [B] is False are left out. The text -> image side is unchanged."""
    img = F.normalize(image_embeds.float(), dim=-1)
    txt = F.normalize(text_embeds.float(), dim=-1)
    all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)
    labels = _local_labels(img.shape[0], img.device)
    logits_per_image = logit_scale * img @ all_txt.t()  # [b, N*b]
    if negative_text_embeds is not None:
        neg = gather_with_grad(F.normalize(negative_text_embeds.float(), dim=-1))
        keep = _gather_no_grad(has_negative.to(img.device, torch.uint8)).bool()
        neg_logits = (logit_scale * img @ neg.t()).masked_fill(~keep, float("-inf"))  # [b, N*b]
        logits_per_image = torch.cat([logits_per_image, neg_logits], dim=1)
    logits_per_text = logit_scale * txt @ all_img.t()
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


# --------------------------------------------------------------------------------------------- FILIP
def filip_loss(
    patch_embeds: torch.Tensor, token_embeds: torch.Tensor, token_mask: torch.Tensor, logit_scale
) -> torch.Tensor:
    """FILIP late interaction with batch negatives (Yao et al. 2021).

    sim(image i -> text j) = mean over i's patches of the max cosine over j's real tokens;
    sim(text j -> image i) = mean over j's real tokens of the max cosine over i's patches.
    Builds a [b, N*b, P, L] tensor on purpose: that B^2*L*P cost is what SPARC avoids.
    """
    # fp32 even under autocast (like SPARC's similarities): a bf16/fp16 similarity tensor cannot even hold the
    # fp32 "minus infinity" used to mask padding (masked_fill overflowed under the trainer's default bf16).
    with torch.autocast(device_type=patch_embeds.device.type, enabled=False):
        v, t, mask = patch_embeds.float(), token_embeds.float(), token_mask.bool()
        all_v, all_t, all_mask = gather_with_grad(v), gather_with_grad(t), _gather_no_grad(mask)
        labels = _local_labels(v.shape[0], v.device)
        i2t = filip_similarity(v, all_t, all_mask)[0]  # local images against all texts [b, N*b]
        t2i = filip_similarity(all_v, t, mask)[1]  # local texts against all images [b, N*b]
        scale = logit_scale.float() if torch.is_tensor(logit_scale) else logit_scale
        return 0.5 * (F.cross_entropy(scale * i2t, labels) + F.cross_entropy(scale * t2i, labels))


def filip_similarity(
    patch_embeds: torch.Tensor, token_embeds: torch.Tensor, token_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP's late-interaction similarities of every image with every text, for retrieval: (image -> text [I, T],
    the mean over the image's patches of the max cosine over the text's real tokens; text -> image [T, I], the
    mean over the text's real tokens of the max cosine over the image's patches). The same two numbers
    `filip_loss` contrasts; FILIP ranks with them, not with global embeddings (which its loss never trains).
    Builds an [I, T, P, L] tensor: callers chunk the images."""
    with torch.autocast(device_type=patch_embeds.device.type, enabled=False):
        v = F.normalize(patch_embeds.float(), dim=-1)
        t = F.normalize(token_embeds.float(), dim=-1)
        mask = token_mask.bool()
        sim = torch.einsum("ipd,jld->ijpl", v, t)  # [I, T, P, L]
        i2t = sim.masked_fill(~mask[None, :, None, :], torch.finfo(torch.float32).min).max(dim=3).values.mean(dim=2)
        m = mask[None].float()  # [1, T, L]
        t2i = (sim.max(dim=2).values * m).sum(-1) / m.sum(-1).clamp_min(1.0)  # [I, T]
    return i2t, t2i.t()


def filip_similarity_chunked(patch_embeds, token_embeds, token_mask, image_chunk: int = 8):
    """`filip_similarity` of every image with every text, both as [images, texts], a few images at a time (the
    [I, T, P, L] tensor of a whole evaluation set does not fit in memory)."""
    pairs = [filip_similarity(patch_embeds[i:i + image_chunk], token_embeds, token_mask)
             for i in range(0, len(patch_embeds), image_chunk)]
    return torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs], dim=1).t()


# --------------------------------------------------------------------------------------------- SPARC
def sparc_alignment(
    patch_embeds: torch.Tensor,
    token_embeds: torch.Tensor,
    token_mask: torch.Tensor | None = None,
    threshold: float | None = None,
    weights: str = "l1",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse token-to-patch alignment within each pair (Eqs. 2-5).

    Returns (grouped [B, L, D], weights [B, L, P]) in fp32. Padded tokens get all-zero weights and a zero
    grouped embedding. Runs in fp32 even under autocast: the min-max and the 1/P threshold are sensitive.
    `weights="softmax"` (the paper's ablation; a deviation, docs/sparc_method.md) replaces Eq. 5's L1
    renormalisation by a softmax of the raw similarities s_lp (Eq. 2) over the patches that Eq. 4 keeps.
    `weights="max"` (a deviation) puts all of a token's weight on its most similar patch (ties share it): the limit
    sigma -> 1 of Eq. 4, and the per-token selection of FILIP's late interaction. No gradient flows through the
    choice, only through the chosen patch's embedding (as through FILIP's max).
    """
    if weights not in ("l1", "softmax", "max"):
        raise ValueError(f"weights must be 'l1', 'softmax' or 'max', got {weights!r}")
    with torch.autocast(device_type=patch_embeds.device.type, enabled=False):
        v = patch_embeds.float()
        t = token_embeds.float()
        num_patches = v.shape[1]
        sigma = 1.0 / num_patches if threshold is None else float(threshold)

        # Eq. 2: plain inner products of the un-normalised adapted embeddings, [B, L, P].
        s = torch.bmm(t, v.transpose(1, 2))

        # Eq. 3: min-max normalise each token's row across patches. A flat row (all patches tie, e.g. a
        # constant pad embedding) has no best patch: treat every patch as best (value 1, uniform weights).
        # The denominator is made safe *before* dividing so neither the value nor the gradient is NaN.
        s_min = s.min(dim=-1, keepdim=True).values
        s_max = s.max(dim=-1, keepdim=True).values
        spread = s_max - s_min
        flat = spread <= eps
        s_hat = torch.where(flat, torch.ones_like(s), (s - s_min) / torch.where(flat, torch.ones_like(spread), spread))

        # Eq. 4: sparsify with sigma = 1/P. The best patch has value exactly 1, so every row keeps >= 1 patch.
        s_tilde = s_hat * (s_hat >= sigma).to(s_hat.dtype)

        # Eq. 5: L1 renormalisation (no softmax: the paper's ablation shows softmax hurts). The softmax option
        # runs over the kept patches only; the best patch is always kept, so no row is empty.
        if weights == "l1":
            a = s_tilde / s_tilde.sum(dim=-1, keepdim=True)
        elif weights == "max":
            best = (s_hat >= 1.0).to(s.dtype)  # the max patch has s_hat exactly 1 (x / x), flat rows all 1
            a = best / best.sum(dim=-1, keepdim=True)
        else:
            a = s.masked_fill(s_hat < sigma, torch.finfo(s.dtype).min).softmax(dim=-1)
        if token_mask is not None:
            a = a * token_mask.to(a.dtype).unsqueeze(-1)

        # Language-grouped vision embeddings: c_l = sum_p a_lp v_p, from this pair's own patches only.
        grouped = torch.bmm(a, v)
    return grouped, a


def sparc_fine_grained_loss(
    patch_embeds: torch.Tensor,
    token_embeds: torch.Tensor,
    token_mask: torch.Tensor,
    logit_scale,
    cross_images: int = 0,
    centre_positions: bool = False,
    threshold: float | None = None,
    weights: str = "l1",
) -> torch.Tensor:
    """Fine-grained loss (Eq. 6): each token against the grouped embeddings of its *own* caption.

    Padded tokens are excluded as anchors (rows) and as negatives (columns). Averaged over each caption's
    real tokens, then over the captions of the batch (captions with no real token are left out).
    Memory is O(B * L * (P + L)); no B x B x L x P tensor is built.

    `threshold` is the sparsity threshold sigma of Eq. 4 (None: the paper's 1/P; higher keeps fewer patches), and
    `weights` Eq. 5's normalisation ("l1", the paper's; "softmax", its ablation; "max", the best patch only; see
    `sparc_alignment`).
    Two options, both off by default (the paper's loss), both deviations from the paper (docs/sparc_method.md):
      centre_positions  subtract from every patch embedding its position's mean over the batch's images before
                        the alignment, so a per-position code that every image shares (and a blank image
                        reproduces) cannot tell a caption's tokens apart. The mean is over this process's batch.
      cross_images = K  also contrast each token t_l with the grouped embeddings of the *same* token computed from
                        the next K images of the batch (cyclically; this process's batch only): in the token ->
                        grouped direction the negatives are the caption's other grouped embeddings plus these K,
                        so a token must match its own image's grouping better than other images' groupings
                        (in the spirit of FILIP/PACL). The grouped -> token direction is unchanged. Memory
                        O(B * K * L * P).
    """
    mask = token_mask.bool()
    batch = patch_embeds.shape[0]
    if not 0 <= cross_images < batch:
        raise ValueError(f"cross_images must be in [0, batch size {batch}), got {cross_images}")
    if centre_positions:
        with torch.autocast(device_type=patch_embeds.device.type, enabled=False):
            patch_embeds = patch_embeds.float() - patch_embeds.float().mean(dim=0, keepdim=True)
    grouped, _ = sparc_alignment(patch_embeds, token_embeds, mask, threshold, weights)
    with torch.autocast(device_type=patch_embeds.device.type, enabled=False):
        c = F.normalize(grouped, dim=-1)
        t = F.normalize(token_embeds.float(), dim=-1)
        scale = logit_scale.float() if torch.is_tensor(logit_scale) else logit_scale

        # A very negative *finite* fill: exp() underflows to exactly 0 like -inf, but a caption whose
        # tokens are all padding cannot produce NaN (and 0 * NaN would still poison the gradients).
        neg = torch.finfo(torch.float32).min
        col_pad = ~mask[:, None, :]  # [B, 1, L]
        logits_t2c = (scale * torch.bmm(t, c.transpose(1, 2))).masked_fill(col_pad, neg)  # [B, L, L]
        logits_c2t = (scale * torch.bmm(c, t.transpose(1, 2))).masked_fill(col_pad, neg)
        if cross_images:
            # Column L + j - 1 of row l: t_l against its grouping over image (i + j) mod B, j = 1..K.
            others = [F.normalize(sparc_alignment(patch_embeds.roll(-j, dims=0), token_embeds, mask, threshold,
                                                  weights)[0],
                                  dim=-1)
                      for j in range(1, cross_images + 1)]
            cross = scale * torch.stack([(t * o).sum(-1) for o in others], dim=-1)  # [B, L, K]
            logits_t2c = torch.cat([logits_t2c, cross], dim=-1)
        # The positive of row j is column j: the diagonal of the log-softmax (its first L columns).
        nll_t2c = -torch.diagonal(logits_t2c.log_softmax(dim=-1), dim1=1, dim2=2)  # [B, L]
        nll_c2t = -torch.diagonal(logits_c2t.log_softmax(dim=-1), dim1=1, dim2=2)

        # Padded rows are dropped with `where`, not by multiplying: their own diagonal entry is the fill
        # value, so their NLL is huge (or inf) and 0 * inf would be NaN.
        nll = torch.where(mask, nll_t2c + nll_c2t, torch.zeros_like(nll_t2c))
        num_tokens = mask.float().sum(dim=1)  # L_i
        per_caption = nll.sum(dim=1) / (2.0 * num_tokens.clamp_min(1.0))
        has_tokens = (num_tokens > 0).float()
        return (per_caption * has_tokens).sum() / has_tokens.sum().clamp_min(1.0)


# --------------------------------------------------------------------------------------------- total
def sparc_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    patch_embeds: torch.Tensor,
    token_embeds: torch.Tensor,
    token_mask: torch.Tensor,
    logit_scale,
    lambda_global: float = 0.5,
    lambda_fine: float = 1.0,
    fine_mask: torch.Tensor | None = None,
    cross_images: int = 0,
    centre_positions: bool = False,
    threshold: float | None = None,
    weights: str = "l1",
    negative_text_embeds: torch.Tensor | None = None,
    has_negative: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Eq. 7: lambda_g * L_global + lambda_f * L_fine. Returns the total and both parts (for logging).
    `negative_text_embeds` / `has_negative`: hard-negative captions of the global loss (clip_loss); the
    fine-grained loss sees the true captions only.

    `fine_mask` [B, L] (default: token_mask) restricts the fine-grained loss to some real tokens, e.g. content
    words only; the text embeddings and the global loss are unaffected. `cross_images`, `centre_positions`,
    `threshold` and `weights` are sparc_fine_grained_loss's options (off / None / "l1" by default: the paper's loss)."""
    global_loss = clip_loss(image_embeds, text_embeds, logit_scale, negative_text_embeds, has_negative)
    fine_loss = sparc_fine_grained_loss(patch_embeds, token_embeds, token_mask if fine_mask is None else fine_mask,
                                        logit_scale, cross_images, centre_positions, threshold, weights)
    return {
        "loss": lambda_global * global_loss + lambda_fine * fine_loss,
        "global_loss": global_loss,
        "fine_loss": fine_loss,
    }


# --------------------------------------------------------------------------------------------- caption words
# Not part of SPARC: an auxiliary loss in the manner of SuperClass (Huang et al. 2024, "Classification done right for
# vision-language pre-training"). The image must name the words of its captions from its patch features alone
# (SparkModel's word head: the mean patch feature, or each word at its best patch with word_pooling="max"),
# one softmax over the vocabulary against the IDF-weighted bag of token ids of *all* the image's captions (with one
# drawn caption, as SuperClass does on web data, a shape is named in only some of a scene's captions: measured in
# the README). Unlike the contrastive losses it cannot be won by telling the batch's images apart on colour or
# count. Per-example and without batch negatives, it needs no communication between processes.
def caption_word_idf(input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int,
                     ignore_ids: tuple[int, ...] = ()) -> torch.Tensor:
    """Smoothed inverse document frequency of every token id over a caption corpus [N, L] (each caption one
    document): log((1 + N) / (1 + df)) + 1, with `ignore_ids` (padding, start/end tokens) set to 0 so that no
    caption is rewarded for them. Memory O(tokens), not O(N * vocab)."""
    real = attention_mask.bool()
    caption = torch.arange(input_ids.shape[0])[:, None].expand_as(input_ids)[real]
    pairs = torch.unique(caption * vocab_size + input_ids[real].long())  # each (caption, id) once
    df = torch.bincount(pairs % vocab_size, minlength=vocab_size).double()
    idf = (torch.log((1.0 + input_ids.shape[0]) / (1.0 + df)) + 1.0).float()
    idf[list(ignore_ids)] = 0.0
    return idf


def caption_word_loss(word_logits: torch.Tensor, word_ids: torch.Tensor, idf: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of softmax(word_logits) [B, V] against each image's bag of words: `word_ids` [B, K] holds the
    distinct token ids of the image's captions, -1 padded (data.pairs.image_word_ids); they are weighted by `idf`
    [V] and normalised to sum 1. Images with no weighted word are left out."""
    ids = word_ids.to(word_logits.device).long()
    counts = torch.zeros(word_logits.shape, device=word_logits.device)
    counts.scatter_add_(1, ids.clamp_min(0), (ids >= 0).float())  # -1 padding adds 0
    with torch.autocast(device_type=word_logits.device.type, enabled=False):
        target = (counts > 0).float() * idf.to(word_logits.device).float()
        mass = target.sum(dim=1, keepdim=True)
        target = target / mass.clamp_min(1e-12)
        nll = -(target * word_logits.float().log_softmax(dim=-1)).sum(dim=1)
        has_words = (mass.squeeze(1) > 0).float()
        return (nll * has_words).sum() / has_words.sum().clamp_min(1.0)

"""Both sides of `vs_peers.py`, built with the same architecture and random weights: spark-vlm's models and the
peers' (open_clip for stage 1, open_flamingo for stage 2), plus the paper's SPARC loss written on open_clip's outputs.

Needs the benchmark environment (open_clip_torch, open-flamingo); see `vs_peers.py`. Every builder is seeded, so
both sides of one comparison get the same inputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Stage 1: the tiny dual encoder of the issue.
STAGE1 = dict(image_size=64, patch_size=8, width=192, layers=6, heads=6, context=32, vocab=1000, embed_dim=128)
# Stage 2: a random 6-layer Llama (width 256) behind a stage-1-sized ViT; open_flamingo's resampler and
# cross-attention sizes (its defaults: depth 6, 8 heads x 64, 64 latents, ff_mult 4), xattn before every layer.
STAGE2 = dict(lm_width=256, lm_layers=6, lm_heads=4, resampler_depth=6, heads=8, dim_head=64, num_latents=64,
              ff_mult=4.0)


# ------------------------------------------------------------------------------------------------ stage 1
def spark_dual_encoder():
    from spark_vlm.models import SparkConfig, SparkModel

    s = STAGE1
    return SparkModel(SparkConfig(image_size=s["image_size"], patch_size=s["patch_size"], vision_width=s["width"],
                                  vision_layers=s["layers"], vision_heads=s["heads"], vocab_size=s["vocab"],
                                  max_text_len=s["context"], text_width=s["width"], text_layers=s["layers"],
                                  text_heads=s["heads"], embed_dim=s["embed_dim"]))


class OpenClipSparc(nn.Module):
    """open_clip's two towers as SPARC uses them: mean-pooled patches (no CLS in the pool), a bidirectional text
    tower with a padding mask, every token projected, and the paper's global-path layer h_v on the image side.
    open_clip's ViT always carries a class token (65 tokens here, ours 64); it is left out of every pool."""

    def __init__(self):
        super().__init__()
        import open_clip

        s = STAGE1
        self.clip = open_clip.CustomTextCLIP(  # .text is a TextTransformer (CLIP inlines it)
            embed_dim=s["embed_dim"],
            vision_cfg=dict(image_size=s["image_size"], patch_size=s["patch_size"], width=s["width"],
                            layers=s["layers"], head_width=s["width"] // s["heads"], no_ln_pre=True,
                            pool_type="avg", output_tokens=True),
            text_cfg=dict(context_length=s["context"], vocab_size=s["vocab"], width=s["width"], heads=s["heads"],
                          layers=s["layers"], no_causal_mask=True, pad_id=0, pool_type="none",
                          proj_bias=True, output_tokens=True))
        self.clip.text.use_pad_mask = True  # not a config key in open_clip 3.3; read at every forward
        self.vision_head = nn.Sequential(nn.Linear(s["width"], s["width"]), nn.GELU())  # h_v (SPARC, Eq. 7)

    def forward(self, pixel_values, input_ids, attention_mask):
        visual = self.clip.visual
        _, patches = visual(pixel_values)  # [B, P, width] after ln_post, class token dropped
        token_embeds, _ = self.clip.text(input_ids)  # pool_type "none": every token projected [B, L, D]
        mask = attention_mask.bool()
        m = mask.unsqueeze(-1).to(token_embeds.dtype)
        text_embeds = (token_embeds * m).sum(1) / m.sum(1).clamp_min(1.0)  # linear proj commutes with the mean
        return dict(image_embeds=self.vision_head(patches.mean(1)) @ visual.proj,
                    text_embeds=text_embeds,
                    patch_embeds=patches @ visual.proj,
                    token_embeds=token_embeds, token_mask=mask,
                    logit_scale=self.clip.logit_scale.exp().clamp(max=100.0))


def paper_sparc_fine(v_patch, l_token, language_mask, logit_scale):
    """The fine-grained SPARC loss as in the paper's pseudo-code (Bica et al. 2024, Algorithm 1), in einsum form:
    an independent implementation, so `vs_peers.py` can also check that both sides compute the same value."""
    v_patch, l_token = v_patch.float(), l_token.float()
    mask = language_mask.float()
    sim = torch.einsum("btd,bpd->btp", l_token, v_patch)
    lo, hi = sim.amin(-1, keepdim=True), sim.amax(-1, keepdim=True)
    sim = (sim - lo) / (hi - lo)
    sim = torch.where(sim < 1.0 / v_patch.shape[1], torch.zeros_like(sim), sim)
    weights = sim / sim.sum(-1, keepdim=True) * mask[..., None]
    grouped = F.normalize(torch.einsum("btp,bpd->btd", weights, v_patch), dim=-1)
    token = F.normalize(l_token, dim=-1)
    pad = torch.finfo(torch.float32).min * (1 - mask[:, None, :])
    logits_tg = torch.einsum("btd,bsd->bts", token, grouped) * logit_scale + pad
    logits_gt = torch.einsum("btd,bsd->bts", grouped, token) * logit_scale + pad
    nll = -(logits_tg.log_softmax(-1) + logits_gt.log_softmax(-1)).diagonal(dim1=1, dim2=2)  # [B, L]
    nll = torch.where(language_mask.bool(), nll, torch.zeros_like(nll))  # a pad row's diagonal is -inf
    return (nll.sum(1) / (2 * mask.sum(1))).mean()


def peer_loss(out: dict, loss: str) -> torch.Tensor:
    """open_clip's ClipLoss for the global part (+ 1.0 x the paper's fine-grained loss for SPARC, lambda_g 0.5)."""
    import open_clip

    img, txt = F.normalize(out["image_embeds"], dim=-1), F.normalize(out["text_embeds"], dim=-1)
    global_loss = open_clip.ClipLoss()(img, txt, out["logit_scale"])
    if loss == "clip":
        return global_loss
    fine = paper_sparc_fine(out["patch_embeds"], out["token_embeds"], out["token_mask"], out["logit_scale"])
    return 0.5 * global_loss + fine


def stage1_batch(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random pixels and right-padded captions of 8..32 real tokens (ids >= 1; 0 is the pad)."""
    g = torch.Generator().manual_seed(seed)
    s = STAGE1
    px = torch.randn(batch, 3, s["image_size"], s["image_size"], generator=g)
    lengths = torch.randint(8, s["context"] + 1, (batch,), generator=g)
    mask = (torch.arange(s["context"])[None] < lengths[:, None]).long()
    ids = torch.randint(1, s["vocab"], (batch, s["context"]), generator=g) * mask
    return px, ids, mask


# ------------------------------------------------------------------------------------------------ stage 2
def _tokenizer():
    from spark_vlm.training.standin_lm import train_bpe_tokenizer

    words = "a the two three red blue green small large circle square star ring left right of above below".split()
    return train_bpe_tokenizer([" ".join(words[i:] + words[:i]) for i in range(len(words))] * 10, 300)


def _llama(vocab: int, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    s = STAGE2
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=s["lm_width"], intermediate_size=4 * s["lm_width"],
                      num_hidden_layers=s["lm_layers"], num_attention_heads=s["lm_heads"],
                      num_key_value_heads=s["lm_heads"], max_position_embeddings=128, bos_token_id=tok.eos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def spark_captioner(open_gates: bool = True):
    """(SparkFlamingo, its vision SparkModel) with random weights; gates at 0.5 so the visual path does real work."""
    from spark_vlm.models.flamingo import FlamingoConfig, SparkFlamingo

    torch.manual_seed(0)
    vision = spark_dual_encoder().eval()
    tok = _tokenizer()
    lm = _llama(len(tok), tok)
    s = STAGE2
    config = FlamingoConfig(vision_width=STAGE1["width"], num_latents=s["num_latents"],
                            resampler_depth=s["resampler_depth"], resampler_heads=s["heads"],
                            resampler_dim_head=s["dim_head"], xattn_heads=s["heads"], xattn_dim_head=s["dim_head"],
                            ff_mult=s["ff_mult"])
    model = SparkFlamingo(config, vision, lm, tok)
    if open_gates:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("_gate"):
                    p.fill_(0.5)
    return model


class _VisualTower(nn.Module):
    """What open_flamingo expects of `vision_encoder.visual`: x -> (pooled, patch tokens)."""

    def __init__(self, spark_vision):
        super().__init__()
        self.spark = spark_vision

    def forward(self, x):
        return None, self.spark.image_features(x)


def open_flamingo_captioner(spark_model):
    """open_flamingo's `Flamingo` around copies of the same frozen ViT and Llama. open_flamingo runs its resampler at
    `vis_dim`; ours projects the ViT width to the LM width first, so theirs gets the same trainable projection in
    front (vis_dim = LM width). Their new-token embedding rows are frozen here (ours train 2 rows: 2 x 2 x 256)."""
    import copy

    from open_flamingo.src.flamingo import Flamingo
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.utils import extend_instance

    torch.manual_seed(1)
    lm = _llama(spark_model.lm_vocab_size, spark_model.tokenizer)
    # Same frozen LM weights as ours (the wrapped layers' names differ, the tensors are the LM's own).
    lm.load_state_dict(spark_model.frozen_lm_state_dict())
    lm.resize_token_embeddings(spark_model.lm_vocab_size + 2)
    extend_instance(lm, FlamingoLMMixin)
    lm.set_decoder_layers_attr_name("model.layers")
    # open_flamingo 2.0.1 predates transformers 5, whose generate() calls forward without `attention_mask`
    # when the mask is all ones; give the mixin's positional argument a default (its one compatibility shim).
    mixin_forward = type(lm).forward
    type(lm).forward = lambda self, input_ids, attention_mask=None, **kw: mixin_forward(self, input_ids,
                                                                                        attention_mask, **kw)
    holder = nn.Module()
    holder.visual = _VisualTower(copy.deepcopy(spark_model.vision))
    s = STAGE2
    model = Flamingo(holder, lm, eoc_token_id=spark_model.eoc_token_id, media_token_id=spark_model.image_token_id,
                     vis_dim=s["lm_width"], cross_attn_every_n_layers=1)
    model.perceiver = nn.Sequential(nn.Linear(STAGE1["width"], s["lm_width"]), model.perceiver)
    model.requires_grad_(False)
    model.perceiver.requires_grad_(True)
    model.lang_encoder.gated_cross_attn_layers.requires_grad_(True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_gate"):
                p.fill_(0.5)
    return model


def stage2_batch(model, batch: int, length: int, seed: int = 0):
    """`<image>` + bos + random word tokens; labels = ids with the `<image>` position ignored."""
    g = torch.Generator().manual_seed(seed)
    s = STAGE1
    px = torch.randn(batch, 1, 3, s["image_size"], s["image_size"], generator=g)
    words = torch.randint(2, model.lm_vocab_size, (batch, length - 2), generator=g)
    ids = torch.cat([torch.full((batch, 1), model.image_token_id), torch.full((batch, 1), model.tokenizer.eos_token_id),
                     words], dim=1)
    labels = ids.masked_fill(ids == model.image_token_id, -100)
    return px, ids, torch.ones_like(ids), labels


def count(module: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)

"""The SPARK dual encoder: ViT + text Transformer + linear adapters g_v, g_t + the global-path layer h_v.

As in SPARC (Bica et al. 2024; specified in docs/sparc_method.md):
  patch_embeds  v_p = g_v(f_v(x)_p)                      [B, P, D]
  token_embeds  t_l = g_t(f_t(y)_l)                      [B, L, D] (+ token_mask)
  image_embeds  v̄   = g_v(h_v(mean_p f_v(x)_p))          [B, D]    mean pooling, never a CLS token
  text_embeds   t̄   = g_t(mean over real tokens f_t(y)) [B, D]
  logit_scale   = exp(log_logit_scale), initialised at 1/0.07 and clamped at 100, shared by both losses.
  word_logits   = word_head(mean_p f_v(x)_p)           [B, vocab] only with caption_word_head (a deviation from the
                  paper for the caption-word loss, losses.caption_word_loss; absent by default); with
                  word_pooling="max": max_p word_head(f_v(x)_p), each word scored at its best patch
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as hf_init  # unlike nn.init, leaves already-loaded weights alone
from transformers.utils import ModelOutput

from .encoders import TextTransformer, VisionTransformer

# Size presets: what each changes from the SparkConfig defaults, which are the tiny CPU model (ViT 64px/8,
# 4 layers x 128; text 4 layers x 128; embed 128). "base" is the paper's ViT-B/16 with a 12-layer, 512-wide text
# encoder and 55 text tokens.
PRESETS = {
    "tiny": dict(),
    "small": dict(image_size=128, patch_size=16, vision_width=384, vision_layers=8, vision_heads=6,
                  text_width=384, text_layers=8, text_heads=6, embed_dim=256, max_text_len=40),
    "base": dict(image_size=224, patch_size=16, vision_width=768, vision_layers=12, vision_heads=12,
                 text_width=512, text_layers=12, text_heads=8, embed_dim=512, max_text_len=55),
}


class SparkConfig(PretrainedConfig):
    model_type = "spark"

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        vision_width: int = 128,
        vision_layers: int = 4,
        vision_heads: int = 4,
        vocab_size: int = 1000,
        max_text_len: int = 32,
        text_width: int = 128,
        text_layers: int = 4,
        text_heads: int = 4,
        mlp_ratio: float = 4.0,
        embed_dim: int = 128,
        init_logit_scale: float = 1 / 0.07,
        max_logit_scale: float = 100.0,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        vision_stem: Literal["patch", "conv"] = "patch",
        caption_word_head: bool = False,
        word_pooling: Literal["mean", "max"] = "mean",
        **kwargs,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.vision_width = vision_width
        self.vision_layers = vision_layers
        self.vision_heads = vision_heads
        self.vocab_size = vocab_size
        self.max_text_len = max_text_len
        self.text_width = text_width
        self.text_layers = text_layers
        self.text_heads = text_heads
        self.mlp_ratio = mlp_ratio
        self.embed_dim = embed_dim
        self.init_logit_scale = init_logit_scale
        self.max_logit_scale = max_logit_scale
        self.initializer_range = initializer_range
        self.vision_stem = vision_stem  # "patch": the ViT's patchify; "conv": early convolutions (encoders.conv_stem)
        # A linear classifier from the patch features to the vocabulary, trained by the caption-word loss
        # (SuperClass-style; stage-1 option lambda_words). Off by default: the paper's model has none.
        self.caption_word_head = caption_word_head
        # How the head pools the patches: "mean" scores the mean patch feature (SuperClass); "max" scores every
        # patch and keeps each word's best one (global max pooling for weak labels, Oquab et al. 2015), so a
        # word's gradient reaches the patches that hold its object, not the whole image.
        self.word_pooling = word_pooling
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "SparkConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class SparkOutput(ModelOutput):
    image_embeds: torch.Tensor | None = None  # [B, D] global, un-normalised
    text_embeds: torch.Tensor | None = None  # [B, D]
    patch_embeds: torch.Tensor | None = None  # [B, P, D]
    token_embeds: torch.Tensor | None = None  # [B, L, D]
    token_mask: torch.Tensor | None = None  # [B, L] bool
    logit_scale: torch.Tensor | None = None  # 0-dim, 1/tau
    word_logits: torch.Tensor | None = None  # [B, vocab], only with config.caption_word_head


class SparkModel(PreTrainedModel):
    config_class = SparkConfig
    input_ndim = 3  # one image is [3, H, W] (stage 2 reads this to tell [B, 3, H, W] from [B, M, 3, H, W])
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]

    def __init__(self, config: SparkConfig):
        super().__init__(config)
        c = config
        self.vision_model = VisionTransformer(c.image_size, c.patch_size, c.vision_width, c.vision_layers,
                                              c.vision_heads, c.mlp_ratio, c.vision_stem)
        self.text_model = TextTransformer(c.vocab_size, c.max_text_len, c.text_width, c.text_layers,
                                          c.text_heads, c.mlp_ratio)
        # h_v: one non-linear layer used only on the global image path (and for segmentation).
        self.vision_head = nn.Sequential(nn.Linear(c.vision_width, c.vision_width), nn.GELU())
        self.vision_proj = nn.Linear(c.vision_width, c.embed_dim)  # g_v
        self.text_proj = nn.Linear(c.text_width, c.embed_dim)  # g_t
        # Shape [1], not 0-dim: DeepSpeed broadcasts parameters viewed as bytes, which a 0-dim bf16 tensor refuses.
        self.log_logit_scale = nn.Parameter(torch.full((1,), math.log(c.init_logit_scale)))
        self.word_head = nn.Linear(c.vision_width, c.vocab_size) if c.caption_word_head else None
        self.post_init()

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            hf_init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                hf_init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            hf_init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            hf_init.ones_(module.weight)
            hf_init.zeros_(module.bias)
        elif isinstance(module, (VisionTransformer, TextTransformer)):
            hf_init.normal_(module.pos_embed, mean=0.0, std=std)
        elif isinstance(module, SparkModel):
            hf_init.constant_(module.log_logit_scale, math.log(self.config.init_logit_scale))

    # ------------------------------------------------------------------ pieces
    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=self.config.max_logit_scale).squeeze(0)  # 0-dim

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """f_v(x): raw patch features [B, P, vision_width]."""
        return self.vision_model(pixel_values)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """f_t(y): raw token features [B, L, text_width]."""
        return self.text_model(input_ids, attention_mask)

    def _word_logits(self, feats: torch.Tensor) -> torch.Tensor:
        if self.config.word_pooling == "max":
            return self.word_head(feats).amax(dim=1)
        return self.word_head(feats.mean(dim=1))

    def _global_image(self, feats: torch.Tensor) -> torch.Tensor:
        return self.vision_proj(self.vision_head(feats.mean(dim=1)))

    def _global_text(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(feats.dtype).unsqueeze(-1)
        return self.text_proj((feats * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0))

    # ------------------------------------------------------------------ public API
    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> SparkOutput:
        img = self.image_features(pixel_values)
        txt = self.text_features(input_ids, attention_mask)
        mask = attention_mask.bool()
        return SparkOutput(
            image_embeds=self._global_image(img),
            text_embeds=self._global_text(txt, mask),
            patch_embeds=self.vision_proj(img),
            token_embeds=self.text_proj(txt),
            token_mask=mask,
            logit_scale=self.logit_scale,
            word_logits=None if self.word_head is None else self._word_logits(img),
        )

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Global image embedding [B, D] (CLIP_benchmark / open_clip convention)."""
        out = self._global_image(self.image_features(pixel_values))
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """Global text embedding [B, D]; the mask defaults to `input_ids != pad_token_id`."""
        if attention_mask is None:
            attention_mask = input_ids != self.config.pad_token_id
        out = self._global_text(self.text_features(input_ids, attention_mask), attention_mask.bool())
        return F.normalize(out, dim=-1) if normalize else out

    def patch_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Adapted, un-normalised patch embeddings g_v(f_v(x)_p): [B, P, D] (the fine-grained loss's input)."""
        return self.vision_proj(self.image_features(pixel_values))

    def token_embeddings(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapted, un-normalised token embeddings g_t(f_t(y)_l) [B, L, D] and the bool token mask."""
        return self.text_proj(self.text_features(input_ids, attention_mask)), attention_mask.bool()

    def dense_image_embeddings(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Per-patch embeddings on the *global* path, g_v(h_v(f_v(x)_p)) [B, P, D]: the paper's
        zero-shot segmentation protocol compares these with text embeddings."""
        out = self.vision_proj(self.vision_head(self.image_features(pixel_values)))
        return F.normalize(out, dim=-1) if normalize else out


def register_auto_classes() -> None:
    """Make `AutoConfig`/`AutoModel.from_pretrained(run_dir)` work for saved SPARK models."""
    from transformers import AutoConfig, AutoModel

    try:
        AutoConfig.register("spark", SparkConfig)
        AutoModel.register(SparkConfig, SparkModel)
    except ValueError:  # already registered
        pass

"""SparkFlamingo: a Flamingo-style captioner on top of the frozen stage-1 ViT and a frozen causal LM.

    pixel_values [B, M, 3, H, W] --frozen SparkModel.image_features--> [B, M, P, vision_width]
                                 --PerceiverResampler-->               latents [B, M, num_latents, lm_hidden]
                                 (or --PatchProjector--> one visual token per patch [B, M, P, lm_hidden])
    input_ids [B, T] --frozen LM embeddings (+ a 2-row table for <image>, <|endofchunk|>)--> [B, T, E]
                     --frozen decoder layers, each preceded (every N-th) by a gated xattn block reading the latents
                     --frozen LM head (+ a 2-row head for the new tokens)--> logits [B, T, vocab + 2]

Only the resampler, the gated cross-attention blocks, the two new token embeddings/logit rows (and LoRA adapters
if enabled) train. They are always float32 (the master weights); the frozen LM keeps the dtype it was loaded in
(fp32, bf16 or fp16) and each xattn block casts the hidden states to fp32 and back. The LM's own embedding
matrix and head are never resized or touched: ids >= the LM's vocabulary size are looked up in the new table,
and the new logit columns are appended after the LM's (then the LM's own final step, e.g. soft-capping).

Text token t cross-attends only to the latents of the most recent `<image>` at or before t (open_flamingo's
`only_attend_immediate_media`); tokens before any image get an exactly-zero cross-attention update.
See `gated_xattn.py` for how the latents and masks reach the layers, `flamingo_generate.py` for decoding and
`flamingo_io.py` for trainable-only checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from . import flamingo_generate, flamingo_io
from .dual_encoder import SparkModel
from .gated_xattn import FlamingoDecoderLayer, GatedCrossAttentionBlock, MediaContext, attach_media
from .oracle_vision import OracleVision, load_vision_tower
from .perceiver import PatchProjector, PerceiverResampler


class FlamingoConfig(PretrainedConfig):
    """Hyper-parameters of the trainable stage-2 parts (the frozen backbones bring their own configs). The defaults
    are the tiny CPU run; stage 2's `model` config section is these keyword arguments."""

    model_type = "spark_flamingo"

    def __init__(
        self,
        vision_width: int = 128,  # must equal the SparkModel's vision_width (stage 2 reads it from stage 1)
        resampler: Literal["perceiver", "linear"] = "perceiver",  # patches -> visual tokens (models/perceiver.py)
        num_latents: int = 64,  # perceiver resampler latents
        resampler_depth: int = 2,
        resampler_heads: int = 4,
        resampler_dim_head: int = 32,
        cross_attn_every_n_layers: int = 1,  # a xattn block before decoder layers N-1, 2N-1, ... (open_flamingo)
        xattn_heads: int = 4,
        xattn_dim_head: int = 32,
        ff_mult: float = 2.0,
        lora: bool = False,  # LoRA adapters on the LM through peft (off, as in Flamingo)
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_target_modules: list[str] | None = None,  # None: peft's default for the LM's model_type
        image_token: str = "<image>",
        end_of_chunk_token: str = "<|endofchunk|>",
        **kwargs,
    ):
        self.vision_width = vision_width
        self.resampler = resampler
        self.num_latents = num_latents
        self.resampler_depth = resampler_depth
        self.resampler_heads = resampler_heads
        self.resampler_dim_head = resampler_dim_head
        self.cross_attn_every_n_layers = cross_attn_every_n_layers
        self.xattn_heads = xattn_heads
        self.xattn_dim_head = xattn_dim_head
        self.ff_mult = ff_mult
        self.lora = lora
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = lora_target_modules
        self.image_token = image_token
        self.end_of_chunk_token = end_of_chunk_token
        super().__init__(**kwargs)


@dataclass
class FlamingoOutput(ModelOutput):
    loss: torch.Tensor | None = None  # mean shifted cross-entropy over labels != -100
    logits: torch.Tensor | None = None  # [B, T, lm_vocab + 2]: LM columns, then <image>, <|endofchunk|>


class UnsupportedLMError(ValueError):
    """The causal LM cannot carry the cross-attention layers (its decoder stack was not found, or it did not run
    the layers we wrapped)."""


def find_decoder_layers(lm: PreTrainedModel) -> nn.ModuleList:
    """The LM's stack of decoder layers (GPT-2 `transformer.h`, Llama `model.layers`, OPT `model.decoder.layers`):
    the one ModuleList holding `num_hidden_layers` Hugging Face decoder layers (or our wrappers of them)."""
    n = lm.config.get_text_config().num_hidden_layers
    layer_types = (GradientCheckpointingLayer, FlamingoDecoderLayer)
    found = [m for m in lm.modules() if isinstance(m, nn.ModuleList) and len(m) == n
             and all(isinstance(layer, layer_types) for layer in m)]
    if len(found) != 1:
        raise UnsupportedLMError(f"{type(lm).__name__} is not supported: could not find its decoder layer stack "
                                 f"({len(found)} candidates)")
    return found[0]


def add_flamingo_tokens(tokenizer, tokens: tuple[str, str], lm_vocab_size: int) -> tuple[int, int]:
    """Add `<image>` and `<|endofchunk|>` as special tokens so that their ids are lm_vocab_size and +1, i.e. the
    rows of the new embedding table / columns of the new head. Idempotent for an already-extended tokenizer."""
    vocab = tokenizer.get_vocab()
    if all(t in vocab for t in tokens):
        ids = tuple(vocab[t] for t in tokens)
    else:
        if len(tokenizer) > lm_vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the LM embeds only {lm_vocab_size}")
        # Some LMs pad their embedding matrix beyond the tokenizer (e.g. OPT); fill the gap with unused tokens
        # so that the new ids start right after the LM's vocabulary.
        filler = [f"<|flamingo_unused_{i}|>" for i in range(lm_vocab_size - len(tokenizer))]
        tokenizer.add_special_tokens({"extra_special_tokens": [*filler, *tokens]}, replace_extra_special_tokens=False)
        ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in tokens)
    if ids != (lm_vocab_size, lm_vocab_size + 1):
        raise ValueError(f"{tokens} have ids {ids}; expected {(lm_vocab_size, lm_vocab_size + 1)}")
    return ids


class SparkFlamingo(nn.Module):
    """Frozen `SparkModel` vision tower + frozen causal LM + trainable Flamingo parts. See the module docstring.

    The `lm` passed in is modified in place (frozen, its decoder layers wrapped, LoRA injected if enabled) and the
    `tokenizer` gains the two new tokens; build the model before `deepspeed.initialize` / outside `zero.Init`.
    """

    def __init__(self, config: FlamingoConfig, vision: SparkModel | OracleVision, lm: PreTrainedModel, tokenizer,
                 vision_source: str = "<in-memory>", lm_source: str = "<in-memory>"):
        super().__init__()
        if vision.config.vision_width != config.vision_width:
            raise ValueError(f"config.vision_width={config.vision_width} but the vision tower has "
                             f"{vision.config.vision_width}")
        self.config = config
        self.vision_source, self.lm_source = vision_source, lm_source  # recorded in checkpoint manifests
        vision.requires_grad_(False)
        lm.requires_grad_(False)
        if config.lora:  # before wrapping, so that target module names are the LM's own
            lm = _inject_lora(lm, config)
        self.vision = vision
        self.lm = lm
        self.tokenizer = tokenizer

        # The two new tokens: own input table and own output rows; the LM's matrices stay as they are.
        in_embed, out_embed = lm.get_input_embeddings(), lm.get_output_embeddings()
        self.lm_vocab_size = in_embed.num_embeddings
        self.image_token_id, self.eoc_token_id = add_flamingo_tokens(
            tokenizer, (config.image_token, config.end_of_chunk_token), self.lm_vocab_size)
        device = in_embed.weight.device
        self.new_token_embed = nn.Embedding(2, in_embed.embedding_dim)
        self.new_token_head = nn.Linear(out_embed.in_features, 2, bias=False)
        with torch.no_grad():
            # <image> opens every chunk: it starts as the LM's start-of-text token where the LM has one, so that with
            # closed gates the captioner reads "<bos> caption" exactly as the LM does (any later gain is the image's).
            # <|endofchunk|> (and <image> for an LM without one) starts at the mean LM token, a neutral point.
            mean = mean_input_embedding(in_embed)
            bos = tokenizer.bos_token_id
            start = in_embed(torch.tensor([bos], device=device)).float()[0] if bos is not None else mean
            self.new_token_embed.weight.copy_(torch.stack([start, mean]))
            self.new_token_head.weight.copy_(out_embed.weight.float().mean(0).expand(2, -1))

        hidden = lm.config.get_text_config().hidden_size
        # `perceiver` names the patches -> visual tokens module whichever kind it is (checkpoint keys stay stable).
        if config.resampler == "linear":
            self.perceiver = PatchProjector(config.vision_width, hidden)
        else:
            self.perceiver = PerceiverResampler(config.vision_width, hidden, config.resampler_depth,
                                                config.resampler_heads, config.resampler_dim_head,
                                                config.num_latents, config.ff_mult)
        layers = find_decoder_layers(lm)
        for i, layer in enumerate(layers):
            xattn = None
            if (i + 1) % config.cross_attn_every_n_layers == 0:
                xattn = GatedCrossAttentionBlock(hidden, hidden, config.xattn_heads, config.xattn_dim_head,
                                                 config.ff_mult).to(device=device, dtype=torch.float32)
            layers[i] = FlamingoDecoderLayer(layer, i, xattn)
        self._wrapped_layers = tuple(layers)  # a plain tuple: not registered as submodules a second time
        for module in (self.new_token_embed, self.new_token_head, self.perceiver):
            module.to(device=device, dtype=torch.float32)
        for name, param in self.named_parameters():
            param.requires_grad_(self.is_trainable_name(name))
        self.train()

    @classmethod
    def from_pretrained_parts(cls, config: FlamingoConfig, vision_path: str, lm_path: str,
                              tokenizer_path: str | None = None,
                              lm_dtype: torch.dtype | str = "auto") -> "SparkFlamingo":
        """Load the frozen parts from local directories (stage-1 run dir, HF causal-LM dir) and build the model.
        The LM is loaded in `lm_dtype` ("auto": as saved); the vision tower as saved."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        vision = load_vision_tower(vision_path)
        lm = AutoModelForCausalLM.from_pretrained(lm_path, dtype=lm_dtype)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or lm_path)
        return cls(config, vision, lm, tokenizer, os.path.abspath(vision_path), os.path.abspath(lm_path))

    # ------------------------------------------------------------------ structure
    @staticmethod
    def is_trainable_name(name: str) -> bool:
        """Trainability is structural (by parameter name), so it cannot drift with `requires_grad` edits."""
        return (name.startswith(("perceiver.", "new_token_embed.", "new_token_head."))
                or ".gated_xattn." in name or "lora_" in name)

    def flamingo_layers(self) -> list[FlamingoDecoderLayer]:
        return [m for m in self.lm.modules() if isinstance(m, FlamingoDecoderLayer)]

    def train(self, mode: bool = True) -> "SparkFlamingo":
        """Trainable parts follow `mode`; the frozen vision tower and LM always stay in eval mode (no dropout)."""
        super().train(mode)
        self.vision.eval()
        self.lm.eval()
        for layer in self.flamingo_layers():
            if layer.gated_xattn is not None:
                layer.gated_xattn.train(mode)
        for name, module in self.lm.named_modules():
            if name.endswith("lora_dropout"):  # LoRA's dropout belongs to the trainable adapter
                module.train(mode)
        return self

    def activation_checkpointing_enable(self, enable: bool = True) -> None:
        """Recompute each (xattn block + decoder layer) in the backward pass instead of storing activations."""
        for layer in self.flamingo_layers():
            layer.activation_checkpointing = enable

    # ------------------------------------------------------------------ pieces
    def frozen_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, M, 3, H, W] (or [B, 3, H, W]) -> the frozen tower's patch features [B, M, P, vision_width], without
        gradient. (The oracle tower takes object tokens [B, M, K, dim] instead of pixels.)"""
        pixel_values = self.with_media_axis(pixel_values)
        b, m = pixel_values.shape[:2]
        vision_dtype = next(self.vision.parameters()).dtype
        with torch.no_grad():  # frozen tower: no activations kept for backward
            feats = self.vision.image_features(pixel_values.flatten(0, 1).to(vision_dtype))
        return feats.view(b, m, *feats.shape[1:])

    def visual_latents(self, pixel_values: torch.Tensor | None,
                       image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Pixels (see `frozen_features`), or their features [B, M, P, vision_width] already computed, -> visual
        latents [B, M, num_latents, lm_hidden]."""
        feats = self.frozen_features(pixel_values) if image_features is None else image_features
        return self.perceiver(feats.to(self.perceiver.proj_in.weight.dtype))

    def with_media_axis(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """One image per sequence ([B, 3, H, W]) -> [B, M=1, 3, H, W]; already [B, M, ...] stays as it is."""
        return pixel_values.unsqueeze(1) if pixel_values.ndim == self.vision.input_ndim + 1 else pixel_values

    def media_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] 1-based index of the most recent `<image>` at or before each token (0 = no image yet)."""
        return (input_ids == self.image_token_id).long().cumsum(dim=1)

    @staticmethod
    def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
        """Position ids that skip padding, so a left-padded row is numbered like the unpadded sequence."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """LM embeddings for ids < lm_vocab_size, the new 2-row table for the two added tokens."""
        is_new = input_ids >= self.lm_vocab_size
        old = self.lm.get_input_embeddings()(input_ids.masked_fill(is_new, 0))
        new = self.new_token_embed((input_ids - self.lm_vocab_size).clamp(min=0))
        return torch.where(is_new.unsqueeze(-1), new.to(old.dtype), old)

    def media_context(self, latents: torch.Tensor, media_index: torch.Tensor,
                      kv: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> MediaContext:
        """The per-call argument of the xattn layers (optionally with K/V from `precompute_visual_kv`)."""
        if media_index.numel() and int(media_index.max()) > latents.shape[1]:
            raise ValueError(f"a sequence has {int(media_index.max())} <image> tokens but only "
                             f"{latents.shape[1]} images were given")
        return MediaContext.build(latents, media_index, kv)

    def precompute_visual_kv(self, latents: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Each xattn layer's keys/values of the latents, {decoder layer index: (k, v)}: computed once per
        `generate()` call instead of once per generated token."""
        return {layer.layer_idx: layer.gated_xattn.attn.project_kv(latents)
                for layer in self.flamingo_layers() if layer.gated_xattn is not None}

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               media: MediaContext | None, cache=None, last_only: bool = False) -> torch.Tensor:
        """Run the (wrapped) LM on `input_ids` (the new tokens only when `cache` holds the past) and return
        logits [B, T (or 1 if last_only), lm_vocab + 2]. `attention_mask` covers past + new tokens."""
        with attach_media(self._wrapped_layers, media):
            out = self.lm.base_model(inputs_embeds=self.embed_tokens(input_ids), attention_mask=attention_mask,
                                     position_ids=position_ids, cache=cache, use_cache=cache is not None)
        if media is not None:
            self.check_xattn_ran(media)
        h = out.last_hidden_state[:, -1:] if last_only else out.last_hidden_state
        lm_logits = self.lm.get_output_embeddings()(h)
        new_logits = self.new_token_head(h.to(self.new_token_head.weight.dtype)).to(lm_logits.dtype)
        return lm_final_logits(self.lm.config, torch.cat([lm_logits, new_logits], dim=-1))

    def check_xattn_ran(self, media: MediaContext) -> None:
        """Every cross-attention layer must have read the images; an LM that calls its decoder layers some other
        way than through the stack we wrapped would otherwise train blind with a finite loss."""
        missing = [layer.layer_idx for layer in self._wrapped_layers
                   if layer.gated_xattn is not None and layer.layer_idx not in media.ran]
        if missing:
            raise UnsupportedLMError(f"{type(self.lm).__name__} is not supported: the cross-attention before its "
                                     f"decoder layers {missing} did not run (the image would have no effect)")

    # ------------------------------------------------------------------ public API
    def forward(self, pixel_values: torch.Tensor | None, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None) -> FlamingoOutput:
        """`image_features` [B, M, P, vision_width] (`frozen_features` of the images) stand in for `pixel_values`
        when given: stage 2 computes each training image's features once (training/feature_cache.py)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        media = self.media_context(self.visual_latents(pixel_values, image_features), self.media_index(input_ids))
        logits = self.decode(input_ids, attention_mask, self.positions_from_mask(attention_mask), media)
        loss = None
        if labels is not None:  # token t predicts label t+1
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return FlamingoOutput(loss=loss, logits=logits)

    def generate(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Left-padded prompts -> new token ids [B, T_new] (stop token included, then the pad id), with the
        transformers keywords max_new_tokens, num_beams, do_sample, temperature, top_k, top_p, eos_token_id,
        pad_token_id, length_penalty (others are a TypeError). See `flamingo_generate.generate`."""
        return flamingo_generate.generate(self, pixel_values, input_ids, attention_mask, **kwargs)

    # ------------------------------------------------------------------ trainable-only checkpoints
    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if self.is_trainable_name(n)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable_parameters()]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_trainable_parameters()}

    def frozen_lm_state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen LM weights under the LM's *original* names (our layer wrappers and LoRA's `base_layer`
        removed), so that its hash equals `hash_state_dict(AutoModelForCausalLM.from_pretrained(lm_dir))`."""
        renames = {f"{n}.decoder_layer.": f"{n}." for n, m in self.lm.named_modules()
                   if isinstance(m, FlamingoDecoderLayer)}
        renames.update({f"{n}.base_layer.": f"{n}." for n, m in self.lm.named_modules()
                        if hasattr(m, "base_layer") and hasattr(m, "lora_A")})
        ordered = sorted(renames.items(), key=lambda kv: -len(kv[0]))  # inner (LoRA) prefixes first
        state = {}
        for name, tensor in self.lm.state_dict().items():
            if self.is_trainable_name(f"lm.{name}"):
                continue
            for old, new in ordered:
                if name.startswith(old):
                    name = new + name[len(old):]
            state[name] = tensor
        return state

    def frozen_hashes(self) -> dict[str, str]:
        return {"vision": flamingo_io.hash_state_dict(self.vision),
                "lm": flamingo_io.hash_state_dict(self.frozen_lm_state_dict())}

    def build_manifest(self, **extra) -> dict:
        """Names and content hashes of the frozen parts, this config, plus any `extra` entries (JSON-able)."""
        return flamingo_io.build_manifest(self, **extra)

    def save_trainable(self, out_dir: str, manifest: dict | None = None) -> str:
        return flamingo_io.save_trainable(self, out_dir, manifest)

    def load_trainable(self, ckpt_dir: str, expected_manifest: dict | None = None) -> dict:
        return flamingo_io.load_trainable(self, ckpt_dir, expected_manifest)

    # ------------------------------------------------------------------ whole directories (as a stage-2 run)
    config_class = FlamingoConfig

    def save_pretrained(self, out_dir: str, manifest: dict | None = None) -> str:
        """trainable.safetensors + manifest.json (frozen parts by path and hash) + tokenizer/."""
        return flamingo_io.save_pretrained(self, out_dir, manifest)

    @classmethod
    def from_pretrained(cls, ckpt_dir: str, vision_path: str | None = None, lm_path: str | None = None,
                        device: str | torch.device | None = None) -> "SparkFlamingo":
        """Load a `save_pretrained` directory or a stage-2 run; `vision_path` / `lm_path` relocate the frozen
        parts (their hashes must still match the manifest). See `flamingo_io.load_pretrained`."""
        return flamingo_io.load_pretrained(cls, ckpt_dir, vision_path, lm_path, device)


def mean_input_embedding(in_embed: nn.Module, chunk: int = 8192) -> torch.Tensor:
    """The mean of what the LM's input embedding module *returns* over its vocabulary (fp32). Families that scale
    inside that module (Gemma-3's `embed_scale` = sqrt(hidden)) are respected; chunked to bound the memory."""
    ids = torch.arange(in_embed.num_embeddings, device=in_embed.weight.device)
    total = sum(in_embed(part).float().sum(0) for part in ids.split(chunk))
    return total / in_embed.num_embeddings


def lm_final_logits(lm_config: PretrainedConfig, logits: torch.Tensor) -> torch.Tensor:
    """The last step of the LM's own `*ForCausalLM.forward` after its head, applied to all columns (the two new
    ones included): Cohere's `logit_scale`, Granite's `logits_scaling`, Gemma-2/3's final soft-capping. The
    family test matrix checks the result equals the LM's own logits."""
    c = lm_config.get_text_config()
    if getattr(c, "logit_scale", None) is not None:
        logits = logits * c.logit_scale
    if getattr(c, "logits_scaling", None) is not None:
        logits = logits / c.logits_scaling
    cap = getattr(c, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _inject_lora(lm: PreTrainedModel, config: FlamingoConfig) -> PreTrainedModel:
    """Add LoRA adapters in place (peft's `inject_adapter_in_model`: no PeftModel wrapper, names stay the LM's)."""
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules,
                      fan_in_fan_out=lm.config.model_type == "gpt2")  # GPT-2 uses transposed Conv1D weights
    lm = inject_adapter_in_model(lora, lm)
    return lm

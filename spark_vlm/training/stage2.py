"""Stage 2: train a Flamingo-style captioner on the frozen stage-1 vision backbone with Accelerate (+ DeepSpeed).
This file holds what is particular to stage 2 (data, model, loss, evaluation, FLOPs, export); `run.train` does
the rest.

  stage-1 run dir --(frozen vision)--+
  LM dir or stand-in --(frozen LM)---+--> SparkFlamingo --> run.train --> run directory:
                                                              trainable.safetensors + manifest.json
                                                              tokenizer/ (the LM's, with <image>, <|endofchunk|>)
                                                              config.yaml, metrics.jsonl, eval_results.json
Only the perceiver resampler, the gated cross-attention blocks and the two new tokens' embeddings train.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ..data.cache import CACHE_ROOT, build_once
from ..data.images import to_pixel_values
from ..data.padding import trim_right_padding
from ..data.scenes import SceneConfig
from ..data.stage2 import stage2_arrays, stage2_datasets, val_shapes
from ..models import flamingo_io
from ..models.flamingo import SparkFlamingo, UnsupportedLMError
from ..models.oracle_vision import OracleVision, OracleVisionConfig
from ..models.perceiver import PatchProjector
from .errors import SetupError
from .feature_cache import FrozenFeatureCache
from .run import Stage
from .stage2_config import Stage2Config
from .stage2_eval import (caption_losses, distinct_caption_share, gate_values, model_dtype, question_accuracy,
                          text_only_caption_loss)
from .standin_lm import pretrain_standin_lm


ORACLE = "oracle"  # vision_checkpoint=oracle: ground-truth object tokens instead of a stage-1 backbone


def vision_tower_dir(cfg: Stage2Config) -> Path:
    """The frozen vision tower's directory: the stage-1 run, or the oracle tower (saved once in the cache)."""
    if cfg.vision_checkpoint != ORACLE:
        stage1_config_file(cfg.vision_checkpoint)
        return Path(cfg.vision_checkpoint)
    config = OracleVisionConfig(max_objects=cfg.data.max_objects, image_size=SceneConfig.image_size)
    return build_once(CACHE_ROOT / "oracle_vision" / f"objects{config.max_objects}_size{config.image_size}",
                      lambda folder: OracleVision(config).save_pretrained(folder))


def stage1_config_file(vision_checkpoint: str) -> Path:
    """The stage-1 run's config.json, or a clear error telling the user to run stage 1 first."""
    path = Path(vision_checkpoint, "config.json")
    if not path.is_file():
        raise SetupError(
            f"no stage-1 model in {vision_checkpoint}/ — run stage 1 first: accelerate launch "
            f"stage1_pretrain/train.py (or set vision_checkpoint=PATH to a stage-1 run directory)")
    return path


def resolve_lm(cfg: Stage2Config, train_captions: list[list[str]], val_captions: list[list[str]]) -> str:
    """The configured LM directory, or the caption-pretrained stand-in (trained once, then cached)."""
    if cfg.lm.path:
        if not Path(cfg.lm.path, "config.json").is_file():
            raise FileNotFoundError(f"lm.path={cfg.lm.path}: no Hugging Face model directory there (config.json)")
        return cfg.lm.path
    return str(pretrain_standin_lm([c for caps in train_captions for c in caps], [caps[0] for caps in val_captions],
                                   cache_dir=CACHE_ROOT / "lms", lm=cfg.lm.standin, seed=cfg.train.seed))


def build_model(cfg: Stage2Config, vision_dir: Path, lm_path: str, image: torch.Tensor) -> SparkFlamingo:
    """The captioner on the frozen parts, checked with one forward on `image` (a training input)."""
    vision_width = json.loads((vision_dir / "config.json").read_text())["vision_width"]
    config = cfg.model.flamingo_config(vision_width)
    try:
        model = SparkFlamingo.from_pretrained_parts(config, str(vision_dir), lm_path, lm_dtype=cfg.lm.torch_dtype())
        check_lm_supported(model, image)
    except UnsupportedLMError as e:
        raise SetupError(f"lm.path={lm_path}: {e}") from None
    # DeepSpeed's "auto" bucket sizes are derived from model.config.hidden_size: the LM's width here.
    model.config.hidden_size = model.lm.config.get_text_config().hidden_size
    return model


@torch.no_grad()
def check_lm_supported(model: SparkFlamingo, image: torch.Tensor) -> None:
    """One 2-token forward (an image, then a token) before training: every cross-attention layer must run, or the
    LM is refused in one line (`UnsupportedLMError`) instead of training blind."""
    device = model.perceiver.proj_in.weight.device
    pixels = to_pixel_values(image[None].to(device), model_dtype(model))[:, None]
    ids = torch.tensor([[model.image_token_id, 0]], device=device)
    model(pixels, ids)


@contextmanager
def full_weights_on_load(accelerator):
    """Load the frozen parts whole even under ZeRO-3. Accelerate registers its DeepSpeed config with transformers,
    which then partitions weights already in `from_pretrained` (zero.Init); but the manifest hashes and the
    new-token initialisation need the whole weights. ZeRO-3 still partitions them at `accelerator.prepare`."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def stage2_loss(model, batch: dict, cache: FrozenFeatureCache | None = None, unwrapped=None) -> dict[str, torch.Tensor]:
    """The captioning loss of one batch; with `cache` (and `unwrapped`, the SparkFlamingo inside `model`'s
    wrappers) the frozen features of images seen before are read back instead of recomputed."""
    batch = trim_right_padding(batch)  # the LM runs over the batch's longest sequence, not data.max_text_len
    feats = None if cache is None else cache.features(unwrapped, batch["images"], batch["index"])
    px = None if feats is not None else to_pixel_values(batch["images"], model_dtype(model))[:, None]  # 1 per text
    out = model(px, batch["input_ids"], batch["attention_mask"], labels=batch["labels"], image_features=feats)
    return {"loss": out.loss}


def trainable_fp32_state(accelerator, model) -> dict[str, torch.Tensor]:
    """The trainable weights in fp32, whole, on every rank. Under DeepSpeed the module may hold bf16/fp16 copies
    (and ZeRO-3 only partitions): the fp32 master weights come from the optimizer, gathered one trainable tensor
    at a time (a collective: every rank calls it), never the frozen LM."""
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.state.deepspeed_plugin is None:
        return {n: p.detach().float() for n, p in unwrapped.named_trainable_parameters()}
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, param in unwrapped.named_trainable_parameters():
        master = safe_get_full_fp32_param(param)
        state[name] = (master if master is not None else param.detach()).float()
    return state


def export_run(accelerator, model, tokenizer, manifest: dict, run_dir: Path) -> None:
    """Trainable weights (fp32, gathered from every rank, DeepSpeed included), manifest and the extended
    tokenizer into the run directory."""
    trainable = trainable_fp32_state(accelerator, model)
    if not accelerator.is_main_process:
        return
    flamingo_io.write_trainable(trainable, manifest, str(run_dir))
    tokenizer.save_pretrained(str(run_dir / flamingo_io.TOKENIZER_DIR))


def stage2_flops_per_sample(model: SparkFlamingo, text_len: float) -> float:
    """Matmul FLOPs of one training sample, each part on the tokens it runs on (2 per multiply-add and token for
    the forward, 2 for the activation backward, 2 for the weight backward; attention scores left out):
      frozen image tower   forward only, on its P patches (a SparkModel's text tower does not run)
      perceiver            forward + full backward: proj_in and norm_media on the P patches, to_kv on the P
                           patches + n latents, the rest on the n latents (resampler=linear: all on the P
                           patches, which are then the n = P visual tokens)
      xattn blocks         forward + full backward: to_kv on the n latents, the rest on the text tokens
      frozen LM            forward + activation backward on the text tokens (the new head rows and LoRA with it);
                           embedding tables are look-ups, not matmuls (a head tied to one still counts)
    tests/test_flamingo.py checks it against torch's FlopCounterMode on a real step."""
    numel = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    patches = model.vision.config.num_patches
    tower = getattr(model.vision, "vision_model", model.vision)
    perceiver = model.perceiver
    if isinstance(perceiver, PatchProjector):  # resampler=linear: every patch is a visual token
        latents, media, kv = patches, [perceiver], []
    else:
        latents = perceiver.num_latents
        media = [perceiver.proj_in, *(attn.norm_media for attn, _ in perceiver.layers)]
        kv = [attn.to_kv for attn, _ in perceiver.layers]
    blocks = [layer.gated_xattn for layer in model.flamingo_layers() if layer.gated_xattn is not None]
    xattn_kv = [block.attn.to_kv for block in blocks]
    n_perceiver, n_xattn = numel([perceiver]), numel(blocks)
    head = model.lm.get_output_embeddings().weight
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.weight is not head]
    n_lm = (sum(p.numel() for p in model.parameters()) - numel([model.vision]) - n_perceiver - n_xattn
            - numel(tables))
    trainable = (numel(media) * patches + numel(kv) * (patches + latents)
                 + (n_perceiver - numel(media) - numel(kv)) * latents
                 + numel(xattn_kv) * latents + (n_xattn - numel(xattn_kv)) * text_len)
    return 2 * numel([tower]) * patches + 6 * trainable + 4 * n_lm * text_len


def build_stage2(cfg: Stage2Config, accelerator) -> Stage:
    """Data, model and hooks of stage 2 for the shared run (`run.train`)."""
    d = cfg.data
    with accelerator.main_process_first():
        vision_dir = vision_tower_dir(cfg)
        image_size = json.loads((vision_dir / "config.json").read_text())["image_size"]
        train_arrays, val_arrays = stage2_arrays(d, image_size, oracle=cfg.vision_checkpoint == ORACLE)
        questions_of = val_shapes(d, image_size) if d.object_questions else None
        lm_path = resolve_lm(cfg, train_arrays[1], val_arrays[1])
    with full_weights_on_load(accelerator):
        model = build_model(cfg, vision_dir, lm_path, torch.from_numpy(train_arrays[0][0]))
        manifest = model.build_manifest(stage2_config=cfg.__class__.__name__, lm_path=os.path.abspath(lm_path))
        train_data, val_data, prompts = stage2_datasets(train_arrays, val_arrays, model.tokenizer, d.max_text_len,
                                                        cfg.train.seed)
        baseline = text_only_caption_loss(lm_path, val_data, prompts, lm_dtype=cfg.lm.torch_dtype(),
                                          device=accelerator.device)

    n_train = sum(p.numel() for p in model.trainable_parameters())
    n_all = sum(p.numel() for p in model.parameters())
    accelerator.print(f"SparkFlamingo: {n_train / 1e6:.2f}M trainable of {n_all / 1e6:.2f}M parameters; LM {lm_path}; "
                      f"vision {vision_dir}; {len(train_data)} train / {len(val_data)} val images; "
                      f"precision {accelerator.mixed_precision}; {accelerator.num_processes} process(es)"
                      f"{'; DeepSpeed' if accelerator.state.deepspeed_plugin else ''}")
    run_dir = Path(cfg.train.output_dir)
    tokenizer = model.tokenizer

    def evaluate(m) -> dict:
        return {**caption_losses(m, val_data, prompts, accelerator.device), "val_caption_loss_text_only": baseline,
                "distinct_captions": distinct_caption_share(m, val_data, prompts, accelerator.device),
                **gate_values(m),
                **(question_accuracy(m, val_data.images, questions_of, prompts, accelerator.device)
                   if questions_of else {})}

    def summary(step: int, result: dict) -> str:
        gates = [abs(v) for k, v in result.items() if k.startswith("gate_")]
        return (
            f"[step {step}] validation caption loss (caption tokens 2..n, {len(val_data)} images): "
            f"{result['val_caption_loss']:.3f} with each caption's own image | "
            f"{result['val_caption_loss_shuffled_images']:.3f} with another image | "
            f"{result['val_caption_loss_blank_image']:.3f} with a blank image | "
            f"{result['val_caption_loss_text_only']:.3f} for the frozen text-only LM\n"
            f"image contribution (another image - own image): {result['image_contribution']:+.3f} nats/token, "
            f"{result['object_word_contribution']:+.3f} on object words "
            f"({result['val_object_word_loss']:.3f} vs {result['val_object_word_loss_shuffled_images']:.3f}); "
            f"distinct greedy captions {100 * result['distinct_captions']:.0f}% of "
            f"{min(100, len(val_data))} val images; |tanh gate| max {max(gates, default=0):.3f}; "
            f"full stage-2 val loss {result['val_loss']:.3f}\n"
            + (f"yes/no object questions (zero-shot, training format): {result['val_question_accuracy']:.1f}% "
               f"correct with the own image, {result['val_question_accuracy_shuffled_images']:.1f}% with another "
               f"(chance 50), {result['val_question_yes_ratio']:.0f}% yes\n" if "val_question_accuracy" in result else "")
            + f"trainable weights + manifest saved to {run_dir}/ (eval/caption.py --checkpoint {run_dir})"
        )

    # Not under DeepSpeed: ZeRO-3 gathers the tower's weights inside the engine's forward, where the cache's own
    # tower call (outside it) would bypass its schedule.
    cache = None if accelerator.state.deepspeed_plugin else FrozenFeatureCache(len(train_data), d.feature_cache_gb,
                                                                                  say=accelerator.print)
    if cache is not None and cache.enabled:  # sized (and reported) now, before the progress bar starts
        cache.allocate(model.frozen_features(to_pixel_values(train_data.images[:1]))[:, 0])
    return Stage(
        model=model,
        train_data=train_data,
        loss=lambda m, batch: stage2_loss(m, batch, cache, accelerator.unwrap_model(m)),
        evaluate=evaluate,
        # Useful FLOPs: the mean real sequence length (padding beyond it is not work done for the model).
        flops_per_sample=stage2_flops_per_sample(model, float(train_data.attention_mask.float().sum(1).mean())),
        export=lambda acc, m, out_dir: export_run(acc, m, tokenizer, manifest, out_dir),
        summary=summary,
        trainable_only=SparkFlamingo.is_trainable_name,
        frozen={part: manifest[part] for part in flamingo_io.FROZEN_PARTS},
        lr_mult=lambda name: cfg.optim.gate_lr_mult if name.endswith(("attn_gate", "ff_gate")) else 1.0,
    )

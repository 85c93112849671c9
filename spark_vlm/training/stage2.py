"""Stage 2: train a Flamingo-style captioner on the frozen stage-1 vision backbone with Accelerate (+ DeepSpeed).

  stage-1 run dir --(frozen vision)--+
  LM dir or stand-in --(frozen LM)---+--> SparkFlamingo --> train_loop --> run directory:
                                                              trainable.safetensors + manifest.json
                                                              lm/ (tokenizer with <image>, <|endofchunk|>)
                                                              config.yaml, metrics.jsonl, eval_results.json
Only the perceiver resampler, the gated cross-attention blocks and the two new tokens' embeddings train.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..data.cache import CACHE_ROOT
from ..data.images import to_pixel_values
from ..data.pairs import CaptionedImages
from ..data.prompts import FlamingoPrompts
from ..data.stage2 import stage2_arrays, stage2_datasets
from ..models.flamingo import FlamingoConfig, SparkFlamingo
from ..models import flamingo_io
from .config import save_config
from .loop import finish, make_accelerator, train_loop
from .optim import build_optimizer, cosine_schedule
from .stage2_config import Stage2Config
from .standin_lm import pretrain_standin_lm
from .throughput import Throughput, measure_peak_flops


class MissingStage1Error(FileNotFoundError):
    pass


def stage1_config_file(vision_checkpoint: str) -> Path:
    """The stage-1 run's config.json, or a clear error telling the user to run stage 1 first."""
    path = Path(vision_checkpoint, "config.json")
    if not path.is_file():
        raise MissingStage1Error(
            f"no stage-1 model in {vision_checkpoint}/ — run stage 1 first: accelerate launch "
            f"stage1_pretrain/train.py (or set vision_checkpoint=PATH to a stage-1 run directory)")
    return path


def resolve_lm(cfg: Stage2Config, train_captions: list[list[str]], val_captions: list[list[str]]) -> str:
    """The configured LM directory, or the caption-pretrained stand-in (trained once, then cached)."""
    if cfg.lm.path:
        if not Path(cfg.lm.path, "config.json").is_file():
            raise FileNotFoundError(f"lm.path={cfg.lm.path}: no Hugging Face model directory there (config.json)")
        return cfg.lm.path
    lm = cfg.lm
    return str(pretrain_standin_lm(
        [c for caps in train_captions for c in caps], [caps[0] for caps in val_captions],
        cache_dir=CACHE_ROOT / "lms", arch=lm.standin_arch, vocab_size=lm.standin_vocab_size,
        width=lm.standin_width, layers=lm.standin_layers, heads=lm.standin_heads, steps=lm.standin_steps,
        batch_size=lm.standin_batch_size, lr=lm.standin_lr, seed=cfg.train.seed))


def build_model(cfg: Stage2Config, lm_path: str) -> SparkFlamingo:
    vision_dir = Path(cfg.vision_checkpoint)
    vision_width = json.loads(stage1_config_file(cfg.vision_checkpoint).read_text())["vision_width"]
    m = cfg.model
    config = FlamingoConfig(
        vision_width=vision_width, num_latents=m.num_latents,
        resampler_depth=m.resampler_depth, resampler_heads=m.resampler_heads, resampler_dim_head=m.resampler_dim_head,
        cross_attn_every_n_layers=m.cross_attn_every_n_layers, xattn_heads=m.xattn_heads,
        xattn_dim_head=m.xattn_dim_head, ff_mult=m.ff_mult, lora=m.lora, lora_r=m.lora_r, lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout)
    model = SparkFlamingo.from_pretrained_parts(config, str(vision_dir), lm_path)
    # DeepSpeed's "auto" bucket sizes are derived from model.config.hidden_size: the LM's width here.
    model.config.hidden_size = model.lm.config.get_text_config().hidden_size
    return model


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


def model_dtype(model) -> torch.dtype:
    # Under DeepSpeed bf16 the engine casts the model itself, so inputs must follow the parameters' dtype.
    return next(p for p in model.parameters()).dtype


def stage2_loss(model, batch: dict) -> dict[str, torch.Tensor]:
    px = to_pixel_values(batch["images"], model_dtype(model))[:, None]  # one image per sequence
    out = model(px, batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
    return {"loss": out.loss}


def _first_caption_batches(data: CaptionedImages, prompts: FlamingoPrompts, batch_size: int):
    """Each val image's first caption as (image slice, ids, mask, labels, inner labels = caption tokens 2..n)."""
    first = [int(data.offsets[i]) for i in range(len(data))]
    for start in range(0, len(first), batch_size):
        idx = first[start:start + batch_size]
        ids, mask, labels = (data.text[k][idx] for k in ("input_ids", "attention_mask", "labels"))
        inner = labels.clone()
        inner[:, 1] = -100  # c1 is predicted from <image> alone: no text context to compare with
        inner[inner == prompts.end_id] = -100  # <|endofchunk|> is a token the frozen LM never had
        yield slice(start, start + len(idx)), ids, mask, labels, inner


def _mean_nll(pairs) -> float:
    total = sum(loss * n for loss, n in pairs)
    count = sum(n for _, n in pairs)
    return total / max(count, 1)


@torch.no_grad()
def caption_losses(model, data: CaptionedImages, prompts: FlamingoPrompts, device, batch_size: int = 64) -> dict:
    """Validation losses of the captioner: `val_loss` is the full stage-2 objective (caption + <|endofchunk|>);
    `val_caption_loss` scores caption tokens 2..n only, the tokens `text_only_caption_loss` also scores."""
    dtype = model_dtype(model)
    full, inner_losses = [], []
    for rows, ids, mask, labels, inner in _first_caption_batches(data, prompts, batch_size):
        px = to_pixel_values(data.images[rows].to(device), dtype)[:, None]
        ids, mask = ids.to(device), mask.to(device)
        for lab, out in ((labels, full), (inner, inner_losses)):
            n = int((lab[:, 1:] != -100).sum())
            out.append((model(px, ids, mask, labels=lab.to(device)).loss.float().item(), n))
    return {"val_loss": _mean_nll(full), "val_caption_loss": _mean_nll(inner_losses)}


@torch.no_grad()
def text_only_caption_loss(lm_path: str, data: CaptionedImages, prompts: FlamingoPrompts, batch_size: int = 64) -> float:
    """The frozen LM alone on the same tokens (caption tokens 2..n given the earlier ones): the baseline that
    stage 2 must beat. A fresh copy of the LM is used, so the number cannot drift with training."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(lm_path).eval()
    losses = []
    for _, ids, mask, _, inner in _first_caption_batches(data, prompts, batch_size):
        ids, mask, inner = ids[:, 1:], mask[:, 1:], inner[:, 1:]  # drop <image>: c1..cn <eoc> <pad>...
        ids = ids.masked_fill(ids >= lm.config.vocab_size, prompts.pad_id)  # <eoc> is never scored anyway
        logits = lm(input_ids=ids, attention_mask=mask).logits.float()
        target = inner[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), ignore_index=-100,
                                                reduction="sum")
        n = int((target != -100).sum())
        losses.append((nll.item() / max(n, 1), n))
    return _mean_nll(losses)


def export_run(accelerator, model, manifest: dict, run_dir: Path) -> None:
    """Trainable weights (gathered from every rank, DeepSpeed included) + manifest into the run directory."""
    state = accelerator.get_state_dict(model)  # collective under ZeRO-3: every rank must call it
    if not accelerator.is_main_process:
        return
    unwrapped = accelerator.unwrap_model(model)
    trainable = {k: v.detach().cpu().contiguous() for k, v in state.items() if unwrapped.is_trainable_name(k)}
    save_file(trainable, str(run_dir / flamingo_io.WEIGHTS_NAME), metadata={"format": flamingo_io.FORMAT})
    (run_dir / flamingo_io.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def train_stage2(cfg: Stage2Config, resume: str | None = None) -> dict:
    from accelerate.utils import set_seed

    accelerator = make_accelerator(cfg.train)
    set_seed(cfg.train.seed)
    run_dir = Path(cfg.train.output_dir)
    d = cfg.data
    with accelerator.main_process_first():
        image_size = json.loads(stage1_config_file(cfg.vision_checkpoint).read_text())["image_size"]
        train_arrays, val_arrays = stage2_arrays(d, image_size)
        lm_path = resolve_lm(cfg, train_arrays[1], val_arrays[1])
    with full_weights_on_load(accelerator):
        model = build_model(cfg, lm_path)
        manifest = model.build_manifest(stage2_config=cfg.__class__.__name__)
        train_data, val_data, prompts = stage2_datasets(train_arrays, val_arrays, model.tokenizer, d.max_text_len,
                                                        cfg.train.seed)
        baseline = text_only_caption_loss(lm_path, val_data, prompts)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        model.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    if cfg.train.grad_checkpointing:
        model.activation_checkpointing_enable()

    n_train = sum(p.numel() for p in model.trainable_parameters())
    n_all = sum(p.numel() for p in model.parameters())
    accelerator.print(f"SparkFlamingo: {n_train / 1e6:.2f}M trainable of {n_all / 1e6:.2f}M parameters; LM {lm_path}; "
                      f"vision {cfg.vision_checkpoint}; {len(train_data)} train / {len(val_data)} val images; "
                      f"precision {accelerator.mixed_precision}; {accelerator.num_processes} process(es)"
                      f"{'; DeepSpeed' if accelerator.state.deepspeed_plugin else ''}")
    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.eps)
    scheduler = cosine_schedule(optimizer, cfg.optim.warmup_steps, cfg.train.max_steps, cfg.optim.min_lr_ratio)
    loader = torch.utils.data.DataLoader(train_data, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                                         num_workers=cfg.train.num_workers)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    # FLOPs per sample: frozen vision forward (2NT), frozen LM forward + activation backward (4NT),
    # trainable parts forward + full backward (6NT). Approximate, attention scores left out.
    unwrapped = accelerator.unwrap_model(model)
    n_vision = sum(p.numel() for p in unwrapped.vision.parameters())
    n_lm = n_all - n_vision - n_train
    fps = 2 * n_vision * unwrapped.vision.config.num_patches + (4 * n_lm + 6 * n_train) * d.max_text_len
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
    peak = cfg.train.peak_tflops * 1e12 if cfg.train.peak_tflops else measure_peak_flops(accelerator.device, dtype) * accelerator.num_processes

    def evaluate(m, step):
        return {**caption_losses(m, val_data, prompts, accelerator.device), "val_caption_loss_text_only": baseline}

    state, result = train_loop(
        accelerator, model, optimizer, scheduler, loader, loss_fn=stage2_loss, eval_fn=evaluate,
        train=cfg.train, optim=cfg.optim, run_dir=run_dir, throughput=Throughput(fps, peak), resume=resume,
        on_save=lambda _path: export_run(accelerator, model, {**manifest, "lm_path": os.path.abspath(lm_path)}, run_dir),
        trainable_only=SparkFlamingo.is_trainable_name,
    )
    summary = (
        f"[step {state.step}] validation caption loss {result['val_caption_loss']:.3f} with the image vs "
        f"{result['val_caption_loss_text_only']:.3f} for the frozen text-only LM (caption tokens 2..n, "
        f"{len(val_data)} images); full stage-2 val loss {result['val_loss']:.3f}\n"
        f"trainable weights + manifest saved to {run_dir}/ (eval/caption.py --checkpoint {run_dir})"
    )
    finish(accelerator, run_dir, state.step, result, summary)
    return result

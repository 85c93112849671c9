"""Stage 1: pretrain the SPARK dual encoder (or the CLIP / FILIP baseline) with Accelerate.

  config -> data (scenes, tokenizer) -> model -> train_loop -> run directory:
    config.json + model.safetensors   SparkModel.from_pretrained(run_dir)
    tokenizer.model                   CaptionTokenizer.load(run_dir)
    config.yaml                       the resolved experiment config
    metrics.jsonl, tensorboard/       one record per optimiser step + eval records
    eval_results.json                 the final held-out evaluation
    checkpoints/step_N/               full training state for --resume latest
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.images import to_pixel_values
from ..data.stage1 import build_stage1_data
from ..losses import clip_loss, filip_loss, spark_loss
from ..models import SparkConfig, SparkModel
from .config import save_config
from .loop import finish, make_accelerator, train_loop
from .optim import build_optimizer, cosine_schedule
from .stage1_config import Stage1Config
from .stage1_eval import evaluate_stage1
from .throughput import Throughput, measure_peak_flops, transformer_train_flops


def stage1_loss(cfg: Stage1Config, model, batch: dict) -> dict[str, torch.Tensor]:
    """One micro-batch through the model and the configured objective."""
    device = next(model.parameters()).device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}  # no-op for prepared loaders
    px = to_pixel_values(batch["images"])
    out = model(px, batch["input_ids"], batch["attention_mask"])
    if cfg.loss == "clip":
        return {"loss": clip_loss(out.image_embeds, out.text_embeds, out.logit_scale)}
    if cfg.loss == "filip":
        return {"loss": filip_loss(out.patch_embeds, out.token_embeds, out.token_mask, out.logit_scale)}
    return spark_loss(out.image_embeds, out.text_embeds, out.patch_embeds, out.token_embeds, out.token_mask,
                      out.logit_scale, lambda_global=cfg.lambda_global, lambda_fine=cfg.lambda_fine)


def flops_per_sample(model: SparkModel) -> float:
    """Training FLOPs of one image-caption pair (matmuls of both towers; embeddings excluded)."""
    c = model.config
    vision = sum(p.numel() for n, p in model.vision_model.named_parameters() if "pos_embed" not in n)
    vision += sum(p.numel() for p in model.vision_head.parameters()) + sum(p.numel() for p in model.vision_proj.parameters())
    text = sum(p.numel() for n, p in model.text_model.named_parameters() if "embed" not in n)
    text += sum(p.numel() for p in model.text_proj.parameters())
    return (transformer_train_flops(vision, c.num_patches, c.vision_layers, c.vision_width)
            + transformer_train_flops(text, c.max_text_len, c.text_layers, c.text_width))


def export_model(accelerator, model, tokenizer, run_dir: Path) -> None:
    """Write the `from_pretrained`-loadable model and tokenizer into the run directory (rank 0)."""
    unwrapped = accelerator.unwrap_model(model)
    unwrapped = getattr(unwrapped, "_orig_mod", unwrapped)  # torch.compile wrapper
    state = accelerator.get_state_dict(model)
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    if accelerator.is_main_process:
        unwrapped.save_pretrained(str(run_dir), state_dict=state, safe_serialization=True)
        tokenizer.save(run_dir)


def train_stage1(cfg: Stage1Config, resume: str | None = None) -> dict:
    """Run stage 1 end to end; returns the final held-out evaluation."""
    from accelerate.utils import set_seed

    accelerator = make_accelerator(cfg.train)
    set_seed(cfg.train.seed)
    run_dir = Path(cfg.train.output_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    arch = cfg.model.resolved()
    train_data, val_data, tokenizer = build_stage1_data(cfg.data, accelerator, arch["max_text_len"], arch["image_size"],
                                                        cfg.train.seed)
    model = SparkModel(SparkConfig(**arch, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id))
    if cfg.train.grad_checkpointing:
        model.activation_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    accelerator.print(f"SparkModel ({cfg.model.preset}): {n_params / 1e6:.2f}M parameters, loss={cfg.loss}, "
                      f"{len(train_data) if hasattr(train_data, '__len__') else 'streamed'} train / {len(val_data)} val images, vocab {tokenizer.vocab_size}, "
                      f"precision {cfg.train.precision} (accelerate: {accelerator.mixed_precision}), "
                      f"{accelerator.num_processes} process(es)")
    fps = flops_per_sample(model)

    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.eps)
    scheduler = cosine_schedule(optimizer, cfg.optim.warmup_steps, cfg.train.max_steps, cfg.optim.min_lr_ratio)
    streaming = isinstance(train_data, torch.utils.data.IterableDataset)
    loader = torch.utils.data.DataLoader(train_data, batch_size=cfg.train.batch_size, shuffle=not streaming,
                                         drop_last=True, num_workers=cfg.train.num_workers)
    if cfg.train.compile:
        model = torch.compile(model)
    if streaming:  # the shards are already split over ranks and workers: accelerate must not split again
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    if cfg.train.peak_tflops:
        peak = cfg.train.peak_tflops * 1e12
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision, torch.float32)
        peak = measure_peak_flops(accelerator.device, dtype) * accelerator.num_processes
    accelerator.print(f"model FLOPs per sample {fps / 1e9:.3f} GFLOP; device peak {peak / 1e12:.2f} TFLOP/s "
                      f"({'configured' if cfg.train.peak_tflops else 'measured matmul'})")

    state, result = train_loop(
        accelerator, model, optimizer, scheduler, loader,
        loss_fn=lambda m, b: stage1_loss(cfg, m, b),
        eval_fn=lambda m, step: evaluate_stage1(m, val_data, accelerator.device),
        train=cfg.train, optim=cfg.optim, run_dir=run_dir, throughput=Throughput(fps, peak), resume=resume,
        on_save=lambda _path: export_model(accelerator, model, tokenizer, run_dir),
    )
    summary = (
        f"[step {state.step}] held-out retrieval on {len(val_data)} images: "
        f"R@1 = {result['R@1']:.1f}% (text->image {result['text_to_image_R@1']:.1f}%, "
        f"image->text {result['image_to_text_R@1']:.1f}%), R@5 = {result['R@5']:.1f}%\n"
        f"alignment: {100 * result['patches_kept_frac']:.1f}% of patches kept, entropy "
        f"{result['align_entropy']:.2f} nats (uniform {result['align_entropy_uniform']:.2f}); fine loss "
        f"matched {result['fine_loss_matched']:.3f} vs shuffled image {result['fine_loss_shuffled']:.3f}\n"
        f"model and tokenizer saved to {run_dir}/ (SparkModel.from_pretrained('{run_dir}'))"
    )
    finish(accelerator, run_dir, state.step, result, summary)
    return result

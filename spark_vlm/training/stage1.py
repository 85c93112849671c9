"""Stage 1: pretrain the SPARK dual encoder (or the CLIP / FILIP baseline). This file holds what is particular to
stage 1 (data, model, loss, evaluation, FLOPs, export); `run.train` does the rest.

  config -> data (scenes, tokenizer) -> model -> run.train -> run directory:
    config.json + model.safetensors   SparkModel.from_pretrained(run_dir)
    tokenizer.model                   CaptionTokenizer.load(run_dir)
    config.yaml                       the resolved experiment config
    metrics.jsonl, tensorboard/       one record per optimiser step + eval records
    eval_results.json                 the final held-out evaluation
    checkpoints/step_N/               full training state for --resume latest
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..data.content_tokens import FunctionTokens
from ..data.images import to_pixel_values
from ..data.padding import trim_right_padding
from ..data.stage1 import build_stage1_data
from ..losses import caption_word_idf, caption_word_loss, clip_loss, filip_loss, sparc_loss
from ..models import SparkModel
from .run import Stage
from .stage1_config import Stage1Config
from .stage1_eval import GROUNDING_SCENES, evaluate_stage1, grounding_set, held_out_truth
from .throughput import transformer_train_flops

# The caption tensors of a stage-1 batch (true and hard-negative): the text tower runs over the batch's longest
# caption, not data's max_text_len (the median batch's longest is 25 of 32 tokens on the built-in scenes).
CAPTION_KEYS = ("input_ids", "attention_mask", "neg_input_ids", "neg_attention_mask")


def stage1_loss(cfg: Stage1Config, model, batch: dict, function_tokens: FunctionTokens | None = None,
                word_idf: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One micro-batch through the model and the configured objective, plus lambda_words times the caption-word
    loss when it is on (`function_tokens` is needed with fine_content_tokens_only, `word_idf` with lambda_words)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}  # no-op for prepared loaders
    if cfg.loss != "filip":  # FILIP gathers token rows across ranks, which must then share data's max length
        batch = trim_right_padding(batch, keys=CAPTION_KEYS, masks=("attention_mask", "neg_attention_mask"))
    out, negatives = _forward(cfg, model, batch)
    losses = _contrastive_loss(cfg, out, batch, negatives, function_tokens)
    if cfg.lambda_words:
        losses["word_loss"] = caption_word_loss(out.word_logits, batch["word_ids"], word_idf)
        losses["loss"] = losses["loss"] + cfg.lambda_words * losses["word_loss"]
    return losses


def _forward(cfg: Stage1Config, model, batch: dict) -> tuple:
    """The model's output for the batch's true captions, and the hard-negative arguments of the global loss."""
    px = to_pixel_values(batch["images"])
    if cfg.hard_negatives == "none":
        return model(px, batch["input_ids"], batch["attention_mask"]), {}
    # The negative captions ride in the same forward as extra text rows (one call through the wrapped model).
    b = batch["input_ids"].shape[0]
    out = model(px, torch.cat([batch["input_ids"], batch["neg_input_ids"]]),
                torch.cat([batch["attention_mask"], batch["neg_attention_mask"]]))
    negatives = {"negative_text_embeds": out.text_embeds[b:], "has_negative": batch["has_negative"]}
    return replace(out, text_embeds=out.text_embeds[:b], token_embeds=out.token_embeds[:b],
                   token_mask=out.token_mask[:b]), negatives


def _contrastive_loss(cfg: Stage1Config, out, batch: dict, negatives: dict,
                      function_tokens: FunctionTokens | None) -> dict[str, torch.Tensor]:
    """The configured contrastive objective (clip, filip or sparc) on the model's output."""
    if cfg.loss == "clip":
        return {"loss": clip_loss(out.image_embeds, out.text_embeds, out.logit_scale, **negatives)}
    if cfg.loss == "filip":
        return {"loss": filip_loss(out.patch_embeds, out.token_embeds, out.token_mask, out.logit_scale)}
    fine_mask = None
    if cfg.fine_content_tokens_only:
        fine_mask = out.token_mask & function_tokens.content_mask(batch["input_ids"], batch["attention_mask"])
    return sparc_loss(out.image_embeds, out.text_embeds, out.patch_embeds, out.token_embeds, out.token_mask,
                      out.logit_scale, lambda_global=cfg.lambda_global, lambda_fine=cfg.lambda_fine,
                      fine_mask=fine_mask, cross_images=cfg.fine_cross_images,
                      centre_positions=cfg.fine_centre_positions, threshold=cfg.fine_threshold,
                      weights=cfg.fine_weights, **negatives)


def flops_per_sample(model: SparkModel, text_len: float | None = None) -> float:
    """Training FLOPs of one image-caption pair (matmuls of both towers; embeddings excluded), the text tower's
    over `text_len` tokens (default max_text_len; the trainer passes the mean real caption length: the padding
    that a batch still carries up to its longest caption is not useful work)."""
    c = model.config
    vision = sum(p.numel() for n, p in model.vision_model.named_parameters() if "embed" not in n)
    vision += sum(p.numel() for p in model.vision_head.parameters()) + sum(p.numel() for p in model.vision_proj.parameters())
    text = sum(p.numel() for n, p in model.text_model.named_parameters() if "embed" not in n)
    text += sum(p.numel() for p in model.text_proj.parameters())
    return (stem_train_flops(model) + transformer_train_flops(vision, c.num_patches, c.vision_layers, c.vision_width)
            + transformer_train_flops(text, text_len or c.max_text_len, c.text_layers, c.text_width))


def stem_train_flops(model: SparkModel) -> float:
    """Training FLOPs of the vision stem for one image. Its convolutions run at their own resolutions (a conv stem's
    first layer at (image/2)^2 positions), not once per patch token: 6 * weights * output positions each."""
    flops, side = 0, model.config.image_size
    for conv in (m for m in model.vision_model.patch_embed.modules() if isinstance(m, torch.nn.Conv2d)):
        side //= conv.stride[0]
        flops += 6 * conv.weight.numel() * side**2
    return flops


def export_model(accelerator, model, tokenizer, run_dir: Path) -> None:
    """Write the `from_pretrained`-loadable model and tokenizer into the run directory (rank 0)."""
    unwrapped = accelerator.unwrap_model(model)
    unwrapped = getattr(unwrapped, "_orig_mod", unwrapped)  # torch.compile wrapper
    state = accelerator.get_state_dict(model)
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    if accelerator.is_main_process:
        unwrapped.save_pretrained(str(run_dir), state_dict=state, safe_serialization=True)
        tokenizer.save(run_dir)


def build_stage1(cfg: Stage1Config, accelerator) -> Stage:
    """Data, model and hooks of stage 1 for the shared run (`run.train`)."""
    arch = cfg.model.spark_config()
    train_data, val_data, tokenizer = build_stage1_data(cfg.data, accelerator, arch.max_text_len, arch.image_size,
                                                        cfg.train.seed, cfg.hard_negatives, cfg.lambda_words > 0)
    truth = held_out_truth(cfg.data, arch.image_size)  # the scenes' ground truth, parsed once for every eval
    model = SparkModel(cfg.model.spark_config(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id,
                                              caption_word_head=cfg.lambda_words > 0))
    n_params = sum(p.numel() for p in model.parameters())
    n_train = len(train_data) if hasattr(train_data, "__len__") else "streamed"
    accelerator.print(f"SparkModel ({cfg.model.preset}): {n_params / 1e6:.2f}M parameters, loss={cfg.loss}, "
                      f"{n_train} train / {len(val_data)} val images, vocab {tokenizer.vocab_size}, "
                      f"precision {cfg.train.precision} (accelerate: {accelerator.mixed_precision}), "
                      f"{accelerator.num_processes} process(es)")
    run_dir = Path(cfg.train.output_dir)
    function_tokens = FunctionTokens(tokenizer) if cfg.fine_content_tokens_only else None
    # The caption-word loss's IDF over every training caption (each caption one document).
    word_idf = None if not cfg.lambda_words else caption_word_idf(
        train_data.input_ids, train_data.attention_mask, tokenizer.vocab_size, (tokenizer.pad_id,))
    grounding = grounding_set(cfg.data, val_data, tokenizer, arch.image_size, arch.patch_size)

    def summary(step: int, result: dict) -> str:
        grounding_line = "" if "grounding_mass_in_mask" not in result else (
            f"grounding ({result['grounding_words']:.0f} shape/colour words of the first {GROUNDING_SCENES} held-out "
            f"scenes): mass-in-mask {result['grounding_mass_in_mask']:.1f}% (uniform "
            f"{result['grounding_mass_in_mask_uniform']:.1f}%), pointing {result['grounding_pointing']:.1f}% "
            f"(uniform {result['grounding_pointing_uniform']:.1f}%)\n")
        truth_line = "" if truth is None else (
            f"scenes: text->image R@1 {result['text_to_image_R@1']:.1f}% of a perfect model's "
            f"{result['text_to_image_R@1_ceiling']:.1f}%; truth-aware (any image the caption is true of) "
            f"{result['truth_R@1']:.1f}% of {result['truth_R@1_ceiling']:.1f}% (chance "
            f"{result['truth_R@1_chance']:.1f}%)\n")
        return (
            f"[step {step}] held-out retrieval on {len(val_data)} images: "
            f"R@1 = {result['R@1']:.1f}% (text->image {result['text_to_image_R@1']:.1f}%, "
            f"image->text {result['image_to_text_R@1']:.1f}%), R@5 = {result['R@5']:.1f}%\n{truth_line}"
            f"alignment: {100 * result['patches_kept_frac']:.1f}% of patches kept, entropy "
            f"{result['align_entropy']:.2f} nats (uniform {result['align_entropy_uniform']:.2f}); fine loss "
            f"matched {result['fine_loss_matched']:.3f} vs shuffled image {result['fine_loss_shuffled']:.3f} vs blank "
            f"image {result['fine_loss_blank_image']:.3f} vs position code only {result['fine_loss_position_only']:.3f}; "
            f"position explains {100 * result['position_variance_share']:.0f}% of the patch variance\n{grounding_line}"
            f"model and tokenizer saved to {run_dir}/ (SparkModel.from_pretrained('{run_dir}'))"
        )

    return Stage(
        model=model,
        train_data=train_data,
        loss=lambda m, batch: stage1_loss(cfg, m, batch, function_tokens, word_idf),
        evaluate=lambda m: evaluate_stage1(m, val_data, accelerator.device, truth=truth, grounding=grounding,
                                           late_interaction=cfg.loss == "filip"),
        flops_per_sample=flops_per_sample(model, float(train_data.attention_mask.float().sum(1).mean())
                                          if hasattr(train_data, "attention_mask") else None),
        export=lambda acc, m, out_dir: export_model(acc, m, tokenizer, out_dir),
        summary=summary,
    )

"""Load a stage-2 run directory and caption images with it (what `eval/caption.py` and the main job use)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.images import to_pixel_values
from .data.prompts import FlamingoPrompts
from .models import flamingo_io
from .models.flamingo import FlamingoConfig, SparkFlamingo


def load_captioner(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[SparkFlamingo, FlamingoPrompts]:
    """Rebuild the captioner from its manifest: frozen vision + frozen LM from their recorded sources, then the
    trainable weights — after checking that both frozen parts hash to what the run was trained on."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / flamingo_io.MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a stage-2 run directory (no {flamingo_io.MANIFEST_NAME}); "
                                "train one with: accelerate launch stage2_vlm/train.py")
    manifest = json.loads(manifest_path.read_text())
    config = FlamingoConfig.from_dict(manifest["flamingo_config"])
    model = SparkFlamingo.from_pretrained_parts(config, manifest["vision"]["source"], manifest["lm_path"],
                                                tokenizer_path=str(run_dir / "tokenizer"))
    model.load_trainable(str(run_dir))
    model.eval().to(device)
    return model, FlamingoPrompts(model.tokenizer)


@torch.no_grad()
def caption_images(model: SparkFlamingo, prompts: FlamingoPrompts, images: np.ndarray, batch_size: int = 16,
                   progress: bool = True, **generate_kwargs) -> list[str]:
    """uint8 images [N, S, S, 3] -> one caption each (prompt `<image>`, stop at `<|endofchunk|>`)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    captions: list[str] = []
    for start in tqdm(range(0, len(images), batch_size), desc="captioning", disable=not progress):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        px = to_pixel_values(batch, dtype)[:, None]
        prompt = prompts.generation_prompts(len(batch))
        new_ids = model.generate(px, prompt["input_ids"].to(device), prompt["attention_mask"].to(device),
                                 **generate_kwargs)
        captions.extend(prompts.decode(row) for row in new_ids)
    return captions

"""The oracle vision tower: the built-in scenes' ground-truth objects in place of ViT features.

Stage 2's upper bound (`vision_checkpoint=oracle`). It feeds the same perceiver -> gated cross-attention path as
the real backbone, but its "patches" are exact object tokens (data/oracle_tokens.py): one-hot shape, colour and
size, the centre, and the background kind. If a recipe cannot caption well from these, the captioner cannot
learn (a recipe problem); if it can, but not from the real backbone, the backbone does not see.

It has the interface SparkFlamingo uses of a vision tower (`image_features`, `config.vision_width`,
`config.num_patches`, `config.image_size`) and is saved and loaded like any PreTrainedModel, so a run on it has a
manifest, hashes and `--resume` like every other run. Its input is float tokens [N, tokens, dim] instead of
uint8 pixels; `data.images.to_pixel_values` passes float inputs through unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from transformers import PretrainedConfig, PreTrainedModel

from ..data.oracle_tokens import OBJECT_TOKEN_DIM


class OracleVisionConfig(PretrainedConfig):
    model_type = "spark_oracle_vision"

    def __init__(self, max_objects: int = 6, image_size: int = 64, **kwargs):
        self.max_objects = max_objects
        self.image_size = image_size  # the scenes' render size (object centres are normalised by it)
        self.vision_width = OBJECT_TOKEN_DIM
        super().__init__(**kwargs)

    @property
    def num_patches(self) -> int:
        return self.max_objects + 1  # object rows + the background row


class OracleVision(PreTrainedModel):
    config_class = OracleVisionConfig
    input_ndim = 2  # one input is [tokens, dim] (a ViT's is [3, H, W])

    def __init__(self, config: OracleVisionConfig):
        super().__init__(config)
        # A frozen all-ones scale: the tower has weights to save, hash and take the dtype of, and changes nothing.
        self.scale = nn.Parameter(torch.ones(config.vision_width), requires_grad=False)
        self.post_init()

    def _init_weights(self, module):  # the scale is fixed at ones
        pass

    def image_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, max_objects + 1, OBJECT_TOKEN_DIM] ground-truth tokens -> the same, as the "patch features"."""
        expected = (self.config.num_patches, self.config.vision_width)
        if tuple(tokens.shape[1:]) != expected:
            raise ValueError(f"the oracle expects object tokens [N, {expected[0]}, {expected[1]}], got "
                             f"{tuple(tokens.shape)} (an oracle run reads ground-truth scenes, not image files)")
        return tokens * self.scale


def load_vision_tower(path: str | Path) -> PreTrainedModel:
    """A stage-2 vision tower from its directory: a stage-1 SparkModel run, or a saved OracleVision."""
    from .dual_encoder import SparkModel

    model_type = json.loads(Path(path, "config.json").read_text()).get("model_type")
    cls = OracleVision if model_type == OracleVisionConfig.model_type else SparkModel
    return cls.from_pretrained(str(path), dtype="auto")

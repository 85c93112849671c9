"""The stage-1 experiment config. The defaults *are* the tiny CPU run; every key can be overridden from the command
line as `section.key=value`, and a YAML file (configs/stage1_*.yaml) holds only what differs."""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Literal

from ..models.dual_encoder import PRESETS, SparkConfig
from .config import check, kwargs_fields
from .sections import OptimConfig, SceneDataFields, TrainConfig

# The `model` section is `preset` plus SparkConfig's keyword arguments (vocabulary and padding id come from the
# tokenizer; the word head follows lambda_words). A key left null keeps the preset's value, or SparkConfig's default
# where the preset does not set it.
_FROM_ELSEWHERE = ("vocab_size", "pad_token_id", "caption_word_head")
_SparkKwargs = make_dataclass("_SparkKwargs", [("preset", Literal[tuple(PRESETS)], "tiny"),
                                               *kwargs_fields(SparkConfig, skip=_FROM_ELSEWHERE, optional=True)])


@dataclass
class ModelConfig(_SparkKwargs):
    def spark_config(self, **from_data) -> SparkConfig:
        """The preset with the keys set here applied (plus `from_data`: vocab_size, pad_token_id)."""
        chosen = {k: v for k, v in vars(self).items() if k != "preset" and v is not None}
        return SparkConfig.from_preset(self.preset, **chosen, **from_data)

    def validate(self, prefix: str) -> None:
        c = self.spark_config()
        for key in vars(self):
            if key != "preset" and not isinstance(getattr(c, key), str):  # the numbers; choices are checked by type
                check(getattr(c, key) > 0, f"{prefix}{key}", f"must be > 0, got {getattr(c, key)}")
        check(c.image_size % c.patch_size == 0, f"{prefix}patch_size",
              f"{c.patch_size} does not divide image_size {c.image_size}")
        check(c.vision_stem != "conv" or c.patch_size & (c.patch_size - 1) == 0 and c.patch_size >= 2,
              f"{prefix}vision_stem", f"conv needs patch_size to be a power of 2, got {c.patch_size}")
        check(c.vision_width % c.vision_heads == 0, f"{prefix}vision_heads",
              f"{c.vision_heads} does not divide vision_width {c.vision_width}")
        check(c.text_width % c.text_heads == 0, f"{prefix}text_heads",
              f"{c.text_heads} does not divide text_width {c.text_width}")


@dataclass
class DataConfig(SceneDataFields):
    kind: Literal["scenes", "coco", "karpathy", "imagefolder", "webdataset"] = "scenes"
    # Real data (read from local paths, offline); see spark_vlm/data/stage1.py:
    train_path: str | None = None  # coco/karpathy JSON, imagefolder root, or webdataset shard spec
    train_images: str | None = None  # image folder for coco/karpathy
    val_path: str | None = None  # the same for the held-out set (karpathy: its "val" split by default)
    val_images: str | None = None
    strict: bool = False  # stop at the first bad image/caption instead of skipping and counting
    tokenizer: str | None = None  # path to a SentencePiece .model or HF tokenizer; null = train one
    vocab_size: int = 1000  # for the trained SentencePiece model (an upper bound on tiny corpora)

    def validate(self, prefix: str) -> None:
        self.check_scene_fields(prefix, min_val=2)  # retrieval needs at least 2 held-out images
        check(self.vocab_size >= 16, f"{prefix}vocab_size", f"must be >= 16, got {self.vocab_size}")
        if self.kind == "scenes":
            return
        check(bool(self.train_path), f"{prefix}train_path", f"is required for data.kind={self.kind}")
        if self.kind in ("coco", "karpathy"):
            check(bool(self.train_images), f"{prefix}train_images", f"is required for data.kind={self.kind}")
        if self.kind == "webdataset":
            check(bool(self.val_path), f"{prefix}val_path", "is required for data.kind=webdataset (held-out shards)")
        # Paths must exist before any work starts (shard specs are expanded and checked by the reader).
        for key in ("train_path", "train_images", "val_path", "val_images", "tokenizer"):
            value = getattr(self, key)
            if value and not (self.kind == "webdataset" and key.endswith("_path")):
                check(Path(value).exists(), f"{prefix}{key}", f"no such file or directory: {value}")


@dataclass
class Stage1Config:
    loss: Literal["sparc", "clip", "filip"] = "sparc"
    lambda_global: float = 0.5  # the paper's lambda_g
    lambda_fine: float = 1.0  # lambda_f; the paper sweeps {0.5, 1, 5, 10}
    # Options for the fine-grained loss, all off by default (= the paper's loss); see losses.sparc_fine_grained_loss.
    fine_cross_images: int = 0  # also contrast each token with its groupings over the next K images of the batch
    fine_content_tokens_only: bool = False  # no function words or punctuation in the fine loss (data/content_tokens.py)
    fine_centre_positions: bool = False  # subtract each patch position's batch mean before the alignment
    fine_threshold: float | None = None  # sparsity threshold sigma on min-max similarities; null = 1/P (the paper)
    fine_weights: Literal["l1", "softmax", "max"] = "l1"  # Eq. 5: L1 (the paper), softmax (ablation), best patch only
    # NegCLIP-style hard negatives for the global loss (data/hard_negatives.py; built-in scenes only): "shape_swap"
    # gives each caption a false twin with one shape word swapped, so the images must be told apart by shape.
    hard_negatives: Literal["none", "shape_swap"] = "none"
    # Caption-word loss (SuperClass-style, losses.caption_word_loss; a deviation from the paper, 0 = off): a linear
    # head on the patch features (model.word_pooling: mean, or each word at its best patch) names the words of all
    # the image's captions (IDF-weighted), so the pixels must tell which words, shape names included, they hold.
    # Needs the captions up front (not data.kind=webdataset).
    lambda_words: float = 0.0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self, prefix: str = "") -> None:
        check(self.lambda_global >= 0, "lambda_global", f"must be >= 0, got {self.lambda_global}")
        check(self.lambda_fine >= 0, "lambda_fine", f"must be >= 0, got {self.lambda_fine}")
        check(self.lambda_words >= 0, "lambda_words", f"must be >= 0, got {self.lambda_words}")
        check(self.lambda_words == 0 or self.data.kind != "webdataset", "lambda_words",
              "the caption-word loss needs the training captions' word frequencies up front; data.kind=webdataset "
              "streams them")
        check(self.lambda_words > 0 or self.model.word_pooling is None, "model.word_pooling",
              f"pools the caption-word head, which only lambda_words > 0 builds (lambda_words={self.lambda_words})")
        check(self.lambda_global + self.lambda_fine > 0, "lambda_fine", "lambda_global and lambda_fine are both 0")
        check(self.train.batch_size > 1, "train.batch_size", "contrastive losses need a batch of at least 2")
        if self.data.kind == "scenes":  # real data is counted when it is read (run.py)
            self.train.check_one_batch(self.data.num_train, "data.num_train")
        check(0 <= self.fine_cross_images < self.train.batch_size, "fine_cross_images",
              f"must be in [0, train.batch_size={self.train.batch_size}), got {self.fine_cross_images}")
        check(self.fine_threshold is None or 0 <= self.fine_threshold < 1, "fine_threshold",
              f"must be in [0, 1) or null (1/P), got {self.fine_threshold}")
        check(self.hard_negatives == "none" or self.data.kind == "scenes", "hard_negatives",
              f"shape_swap needs the built-in scenes' ground truth; data.kind={self.data.kind}")
        check(self.hard_negatives == "none" or self.loss != "filip", "hard_negatives",
              "is an option of the global loss (clip, sparc); loss=filip has none")
        fine_options = (self.fine_cross_images or self.fine_content_tokens_only or self.fine_centre_positions
                        or self.fine_threshold is not None or self.fine_weights != "l1")
        check(self.loss == "sparc" or not fine_options, "loss",
              f"the fine_* options change SPARK's fine-grained loss; loss={self.loss} has none")

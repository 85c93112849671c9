"""Config loading: YAML + overrides, and one clear error line naming the key for every kind of mistake."""
from pathlib import Path

import pytest
import torch

from spark_vlm.training.config import ConfigError, load_config, to_dict
from spark_vlm.training.stage1_config import Stage1Config

REPO = Path(__file__).resolve().parents[1]


def test_tiny_yaml_equals_the_defaults():
    # The no-argument run and configs/stage1_tiny.yaml must never drift apart.
    assert to_dict(load_config(Stage1Config, REPO / "configs" / "stage1_tiny.yaml")) == to_dict(Stage1Config())


@pytest.mark.parametrize("name", ["stage1_tiny.yaml", "stage1_small.yaml", "stage1_base.yaml", "stage1_words.yaml"])
def test_shipped_configs_validate(name):
    load_config(Stage1Config, REPO / "configs" / name)


@pytest.mark.parametrize("name", ["stage2_tiny.yaml", "stage2_words.yaml"])
def test_shipped_stage2_configs_validate(name):
    from spark_vlm.training.stage2_config import Stage2Config

    load_config(Stage2Config, REPO / "configs" / name)


def test_the_demo_configs_chain():
    """`make demo` runs stage1_words then stage2_words: stage 2 must read the run stage 1 writes, and the Makefile
    must score the run stage 2 writes."""
    from spark_vlm.training.stage2_config import Stage2Config

    stage1 = load_config(Stage1Config, REPO / "configs" / "stage1_words.yaml")
    stage2 = load_config(Stage2Config, REPO / "configs" / "stage2_words.yaml")
    assert stage2.vision_checkpoint == stage1.train.output_dir
    makefile = (REPO / "Makefile").read_text()
    assert "stage1_pretrain/train.py --config configs/stage1_words.yaml" in makefile
    assert "stage2_vlm/train.py --config configs/stage2_words.yaml" in makefile
    assert f"STAGE2 := {stage2.train.output_dir}" in makefile


def test_overrides_apply_with_types():
    cfg = load_config(Stage1Config, None, ["loss=clip", "train.batch_size=64", "optim.lr=3e-4",
                                           "model.vision_layers=2", "train.peak_tflops=null"])
    assert cfg.loss == "clip" and cfg.train.batch_size == 64 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.model.spark_config().vision_layers == 2 and cfg.train.peak_tflops is None
    assert isinstance(load_config(Stage1Config, None, ["optim.lr=1"]).optim.lr, float)


@pytest.mark.parametrize("override, key", [
    (["train.batch_sise=3"], "train.batch_sise: unknown key"),
    (["nonsense=1"], "nonsense: unknown key"),
    (["train.batch_size=abc"], "train.batch_size: expected an integer"),
    (["train.batch_size=0"], "train.batch_size: must be > 0"),
    (["loss=siglip"], "loss: must be one of"),
    (["optim.lr=-1"], "optim.lr: must be > 0"),
    (["train.precision=fp8"], "train.precision: must be one of"),
    (["model.patch_size=7"], "model.patch_size: 7 does not divide image_size 64"),
    (["data.min_objects=5", "data.max_objects=2"], "data.max_objects"),
    (["train.grad_checkpointing=maybe"], "train.grad_checkpointing: expected true/false"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["batch_size"], "not of the form key=value"),
    (["train=3"], "train: is a section, not a value"),
    (["train.peak_tflops=fast"], "train.peak_tflops: expected a number or null"),
    (["model.mlp_ratio=0"], "model.mlp_ratio: must be > 0"),
    (["model.vision_stem=round"], "model.vision_stem: must be one of 'patch' | 'conv'"),
    (["model.vision_stem=conv", "model.image_size=66", "model.patch_size=6"],
     "model.vision_stem: conv needs patch_size to be a power of 2, got 6"),
    (["optim.lr=inf"], "optim.lr: must be a finite number, got inf"),
    (["lambda_fine=nan"], "lambda_fine: must be a finite number"),
    (["optim.betas=[0.9, .inf]"], "optim.betas: must be a finite number"),
    (["train.seed=99999999999"], "train.seed: must be < 2**32"),
    (["train.max_nonfinite_skips=0"], "train.max_nonfinite_skips: must be > 0"),
    (["fine_cross_images=-1"], "fine_cross_images: must be in [0, train.batch_size=64), got -1"),
    (["fine_cross_images=4", "train.batch_size=4"], "fine_cross_images: must be in [0, train.batch_size=4)"),
    (["fine_content_tokens_only=sometimes"], "fine_content_tokens_only: expected true/false"),
    (["loss=clip", "fine_centre_positions=true"], "loss: the fine_* options change SPARK's fine-grained loss"),
    (["fine_threshold=1.5"], "fine_threshold: must be in [0, 1) or null (1/P), got 1.5"),
    (["fine_weights=l2"], "fine_weights"),
    (["loss=filip", "fine_weights=softmax"], "loss: the fine_* options change SPARK's fine-grained loss"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(Stage1Config, None, override)
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Stage1Config, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Stage1Config, bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  max_steps: ten\n")
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer"):
        load_config(Stage1Config, wrong)
    # YAML 1.1 reads 1e-3 as a string; we read it as the number the user meant.
    sci = tmp_path / "sci.yaml"
    sci.write_text("optim:\n  lr: 1e-3\n")
    assert load_config(Stage1Config, sci).optim.lr == pytest.approx(1e-3)
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  max_steps: 10\n  max_steps: 20\n")
    with pytest.raises(ConfigError, match="not valid YAML.*duplicate key max_steps") as err:
        load_config(Stage1Config, twice)
    assert "\n" not in str(err.value)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("train:\n  output_dir: runs/caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(Stage1Config, latin1)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Stage1Config, listed)


def test_model_section_is_the_hf_config_kwargs():
    # One definition per setting: the stage-1 model section is `preset` + SparkConfig's keyword arguments (the
    # preset's values where not set), stage 2's is FlamingoConfig's with FlamingoConfig's defaults, except the one
    # measured recipe choice `resampler=linear` (FlamingoConfig keeps the reference perceiver older runs hold).
    from spark_vlm.models import PRESETS, SparkConfig
    from spark_vlm.models.flamingo import FlamingoConfig
    from spark_vlm.training.stage2_config import Stage2Config

    small = load_config(Stage1Config, None, ["model.preset=small", "model.mlp_ratio=2.0"]).model.spark_config()
    assert small.to_dict() == SparkConfig(**{**PRESETS["small"], "mlp_ratio": 2.0}).to_dict()
    assert Stage1Config().model.spark_config().to_dict() == SparkConfig().to_dict()
    stage2 = load_config(Stage2Config, None, ["model.resampler_depth=3"]).model.flamingo_config(vision_width=32)
    assert stage2.to_dict() == FlamingoConfig(vision_width=32, resampler_depth=3, resampler="linear").to_dict()
    assert Stage2Config().model.flamingo_config(128).to_dict() == FlamingoConfig(resampler="linear").to_dict()
    assert FlamingoConfig().resampler == "perceiver"


def test_stage2_tiny_yaml_equals_the_defaults():
    from spark_vlm.training.stage2_config import Stage2Config

    assert to_dict(load_config(Stage2Config, REPO / "configs" / "stage2_tiny.yaml")) == to_dict(Stage2Config())


def test_stage2_validation_names_the_key():
    from spark_vlm.training.stage2_config import Stage2Config

    for override, key in ((["model.num_latents=0"], "model.num_latents: must be > 0"),
                          (["lm.standin.arch=rnn"], "lm.standin.arch: must be one of"),
                          (["model.resampler=mlp"], "model.resampler: must be one of 'perceiver' | 'linear'"),
                          (["lm.standin.heads=3"], "lm.standin.heads: 3 does not divide width 128"),
                          (["data.max_text_len=2"], "data.max_text_len: must be >= 4"),
                          (["lm.path=/nowhere"], "lm.path: no Hugging Face model directory")):
        with pytest.raises(ConfigError, match=key):
            load_config(Stage2Config, None, override)


def test_real_data_kinds_need_existing_paths(tmp_path):
    with pytest.raises(ConfigError, match="data.train_path: is required for data.kind=coco"):
        load_config(Stage1Config, None, ["data.kind=coco"])
    with pytest.raises(ConfigError, match="data.train_images: no such file or directory"):
        load_config(Stage1Config, None, ["data.kind=coco", f"data.train_path={tmp_path}",
                                         f"data.train_images={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="data.val_path: is required for data.kind=webdataset"):
        load_config(Stage1Config, None, ["data.kind=webdataset", "data.train_path=x-{0..1}.tar"])


def test_overriding_one_key_keeps_the_stage_defaults_of_its_section():
    from spark_vlm.training.stage2_config import Stage2Config

    default = Stage2Config()
    cfg = load_config(Stage2Config, None, ["train.output_dir=elsewhere", "optim.lr=5e-4"])
    assert cfg.train.output_dir == "elsewhere"
    assert cfg.train.max_steps == default.train.max_steps == 1000  # not the generic TrainConfig's (stage 1's) 400
    assert cfg.train.batch_size == default.train.batch_size == 32
    assert cfg.optim.warmup_steps == default.optim.warmup_steps == 50
    assert cfg.optim.lr == pytest.approx(5e-4)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_scenes_smaller_than_one_batch_are_a_config_error(stage, monkeypatch):
    from spark_vlm.training.stage2_config import Stage2Config

    cls = Stage1Config if stage == "stage1" else Stage2Config
    with pytest.raises(ConfigError, match=r"^data.num_train: 4 training samples give no full batch of "
                                          r"train.batch_size=8; need at least 8$"):
        load_config(cls, None, ["data.num_train=4", "train.batch_size=8"])
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under `accelerate launch --num_processes 2`
    with pytest.raises(ConfigError, match="give no full batch of train.batch_size=8 on each of 2 processes; need "
                                          "at least 16"):
        load_config(cls, None, ["data.num_train=12", "train.batch_size=8"])
    monkeypatch.delenv("WORLD_SIZE")
    assert load_config(cls, None, ["data.num_train=8", "train.batch_size=8"]).data.num_train == 8


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only without CUDA")
def test_fp16_without_cuda_is_refused():
    # Accelerate would accept it and train in plain fp32 while config.yaml says fp16.
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a CUDA device"):
        load_config(Stage1Config, None, ["train.precision=fp16"])
    assert load_config(Stage1Config, None, ["train.precision=bf16"]).train.precision == "bf16"

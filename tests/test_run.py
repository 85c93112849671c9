"""The run scaffold both stages share: a stage hands over its pieces and the scaffold does the rest, honouring
the shared `train` settings (here `train.compile`, once silently ignored by stage 2) for either stage's config."""
import json

import pytest
import torch

from spark_vlm.training.config import load_config
from spark_vlm.training.run import Stage, train
from spark_vlm.training.stage1_config import Stage1Config
from spark_vlm.training.stage2_config import Stage2Config


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """Each `train` here starts as a fresh process would: accelerate's singletons otherwise keep the precision of
    whichever test ran first (fp32 there, bf16 "auto" here on a machine with fast bf16: a ValueError)."""
    from inprocess import reset_accelerate

    reset_accelerate()
    yield
    reset_accelerate()


def toy_stage(exported: list):
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))

    def build(cfg, accelerator) -> Stage:
        return Stage(model=torch.nn.Linear(4, 1), train_data=data,
                     loss=lambda m, b: {"loss": torch.nn.functional.mse_loss(m(b[0]), b[1])},
                     evaluate=lambda m: {"weight_norm": m.weight.norm().item()}, flops_per_sample=8.0,
                     export=lambda accelerator, m, run_dir: exported.append(run_dir),
                     summary=lambda step, result: f"toy done at step {step}")
    return build


def test_stage2_refuses_compile_before_any_work():
    from spark_vlm.training.config import ConfigError

    with pytest.raises(ConfigError, match="train.compile: is not supported in stage 2"):
        load_config(Stage2Config, None, ["train.compile=true"])


def test_the_scaffold_compiles_trains_evaluates_and_exports(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)
    exported = []
    cfg = load_config(Stage1Config, None, ["train.compile=true", "train.max_steps=4", "train.save_every=2",
                                         "train.eval_every=0", "train.batch_size=8", "train.precision=fp32",
                                         "train.peak_tflops=1", f"train.output_dir={tmp_path}"])
    result = train(cfg, toy_stage(exported))
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Linear)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("kind") is None] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "eval_results.json").read_text()) == {"step": 4, **result}
    assert exported == [tmp_path, tmp_path]  # at the step-2 checkpoint and at the end
    assert (tmp_path / "config.yaml").is_file()


def test_auto_precision_is_bf16_only_where_bf16_is_fast(monkeypatch):
    from spark_vlm.training import throughput

    cpu = torch.device("cpu")
    assert throughput.resolve_precision("fp16", cpu) == "fp16"  # an explicit choice is kept
    for fast in (True, False):
        monkeypatch.setattr(throughput, "fast_bf16", lambda device, fast=fast: fast)
        assert throughput.resolve_precision("auto", cpu) == ("bf16" if fast else "fp32")


def test_auto_precision_is_recorded_as_what_ran(tmp_path):
    from spark_vlm.training.throughput import fast_bf16

    cfg = load_config(Stage1Config, None, ["train.max_steps=1", "train.batch_size=8", "train.peak_tflops=1",
                                           f"train.output_dir={tmp_path}"])
    assert cfg.train.precision == "auto"
    train(cfg, toy_stage([]))
    saved = load_config(Stage1Config, tmp_path / "config.yaml")
    assert saved.train.precision == ("bf16" if fast_bf16(torch.device("cpu")) else "fp32")


def test_peak_measurement_stops_growing_once_a_matmul_is_slow(monkeypatch):
    from spark_vlm.training import throughput

    sizes = []
    real_randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda n, m, **kw: sizes.append(n) or real_randn(n, m, **kw))
    clock = iter(range(0, 10_000))  # every perf_counter() call is 1 s later: the first matmul already "slow"
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: float(next(clock)))
    peak = throughput.measure_peak_flops(torch.device("cpu"), torch.float32)
    assert sizes == [256, 256] and peak == pytest.approx(2 * 256**3 / 1.0)


def test_truncate_metrics_keeps_steps_up_to_the_checkpoint(tmp_path):
    from spark_vlm.training.run_logging import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 8)] + [json.dumps({"step": 4, "kind": "eval"})]
    path.write_text("\n".join(lines) + '\n{"step": 8, "lo')  # the last line was cut by a crash
    assert truncate_metrics(path, 4) == 4  # steps 5, 6, 7 and the cut line
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2, 3, 4, 4]
    assert truncate_metrics(path, 4) == 0 and truncate_metrics(tmp_path / "absent.jsonl", 1) == 0

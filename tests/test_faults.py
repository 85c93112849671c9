"""Runs that survive faults and bad input (issue 12), on an in-process toy stage: the non-finite guard (skip, count,
stop after N consecutive, never save non-finite weights), checkpoints that carry nothing executable and are
verified against their manifest (`--resume latest` falls back past a damaged one), the run-directory lock, and
a fresh run that leaves nothing of the previous one."""
import fcntl
import json
import math
import pickle

import pytest
import torch
from safetensors.torch import load_file

from spark_vlm.training.cli import run_cli
from spark_vlm.training.run import Stage
from spark_vlm.training.stage1_config import Stage1Config

N, BATCH = 32, 8  # 4 batches an epoch
BASE = ["train.batch_size=8", "train.eval_every=0", "train.precision=fp32", "train.peak_tflops=1",
        "optim.warmup_steps=0", "train.log_every=1"]


class ToyPairs(torch.utils.data.Dataset):
    def __init__(self):
        self.x = torch.randn(N, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return N

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.x[i].sum(0, keepdim=True), "ids": 100 + i}


def toy_stage(poison=lambda model, batch, call: None, weights: list | None = None, data=ToyPairs):
    """A linear model fitting a sum. `poison(model, batch, call)` returns "loss" or "grad" to make this call's
    loss (or only its gradient) non-finite; `weights` collects the weight seen at every call."""
    calls = []

    def loss(model, batch):
        calls.append(1)
        unwrapped = getattr(model, "module", model)
        if weights is not None:
            weights.append(unwrapped.weight.detach().clone())
        out = torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
        kind = poison(unwrapped, batch, len(calls))
        if kind == "loss":
            out = out * math.nan
        elif kind == "grad":  # finite loss (0 is added), infinite gradient (d sqrt(u)/du at u = 0)
            out = out + torch.sqrt(0 * unwrapped.weight.sum())
        return {"loss": out}

    def export(accelerator, model, run_dir):
        unwrapped = getattr(model, "module", model)
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in unwrapped.state_dict().items()}, str(run_dir / "model.safetensors"))

    def build(cfg, accelerator) -> Stage:
        return Stage(model=torch.nn.Linear(4, 1), train_data=data(), loss=loss,
                     evaluate=lambda m: {"weight_norm": m.weight.norm().item()}, flops_per_sample=8.0,
                     export=export, summary=lambda step, result: f"toy done at step {step}")
    return build


def cli(build, out, *args):
    return run_cli(Stage1Config, build, "toy", [*BASE, f"train.output_dir={out}", *args])


def train_records(out):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("kind") is None]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    return err[-1]


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_a_non_finite_step_is_skipped_counted_and_logged_with_its_sample_ids(tmp_path, kind):
    weights = []
    poison = lambda model, batch, call: kind if 105 in batch["ids"].tolist() else None  # noqa: E731
    assert cli(toy_stage(poison, weights), tmp_path, "train.max_steps=8", "train.save_every=4") == 0
    recs = train_records(tmp_path)
    skipped = [r for r in recs if "skipped_ids" in r]
    assert len(skipped) == 2  # sample 105 is seen once in each of the two epochs
    assert all(105 in r["skipped_ids"] and len(r["skipped_ids"]) == BATCH for r in skipped)
    assert [r["nonfinite_skipped"] for r in skipped] == [1, 2]
    assert all(r["grad_norm"] is None for r in skipped) and all(r["grad_norm"] > 0 for r in recs if r not in skipped)
    assert all((r["loss"] is None) == (kind == "loss") for r in skipped)
    for r in skipped:  # the skipped update left the weights exactly as they were; every other one moved them
        assert r["step"] == 8 or torch.equal(weights[r["step"] - 1], weights[r["step"]])
    moved = [s for s in range(1, 8) if s not in [r["step"] for r in skipped]]
    assert all(not torch.equal(weights[s - 1], weights[s]) for s in moved)
    assert torch.isfinite(load_file(tmp_path / "model.safetensors")["weight"]).all()
    state = json.loads((tmp_path / "checkpoints" / "step_00000008" / "trainer_state.json").read_text())
    assert state["nonfinite_skipped"] == 2


def test_consecutive_non_finite_steps_stop_the_run_in_one_line(tmp_path, capsys):
    poison = lambda model, batch, call: "loss" if call > 3 else None  # noqa: E731
    code = cli(toy_stage(poison), tmp_path, "train.max_steps=20", "train.save_every=1", "train.keep_checkpoints=5",
               "train.max_nonfinite_skips=3")
    assert code == 2
    line = error_line(capsys)
    assert "3 consecutive non-finite steps (the last at step 6, sample ids [" in line
    assert line.endswith("The last checkpoint is " + str(tmp_path / "checkpoints" / "step_00000005")
                         + " (--resume latest).")
    # steps 4 and 5 were skipped but their (unchanged, finite) weights were still saved; nothing after step 6
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"step_0000000{s}" for s in range(1, 6)]


def test_non_finite_weights_are_never_saved_or_exported(tmp_path, capsys):
    def poison(model, batch, call):
        if call == 3:  # the weights themselves go bad (as an infinite learning rate once made them)
            with torch.no_grad():
                model.weight.fill_(math.nan)
        return None

    assert cli(toy_stage(poison), tmp_path, "train.max_steps=10", "train.save_every=1",
               "train.keep_checkpoints=5") == 2
    line = error_line(capsys)
    assert line.startswith("error: step 3: 1 weight tensor(s) are non-finite (first: weight); not saving")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]
    for path in [tmp_path / "model.safetensors", *(tmp_path / "checkpoints").glob("*/model.safetensors")]:
        assert all(torch.isfinite(t).all() for t in load_file(path).values()), path


def test_resume_restores_the_schedule_from_json_and_continues_exactly(tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["train.max_steps=7", "train.save_every=3", "train.keep_checkpoints=3", "optim.warmup_steps=2"]
    assert cli(toy_stage(), straight, *args) == 0
    ckpt = straight / "checkpoints" / "step_00000003"
    assert "scheduler" in json.loads((ckpt / "trainer_state.json").read_text())
    assert not list(ckpt.glob("custom_checkpoint_*"))  # nothing Accelerate would unpickle unrestricted
    assert cli(toy_stage(), resumed, *args, "--resume", str(ckpt)) == 0
    assert f"resumed from {ckpt} at step 3" in capsys.readouterr().out
    a, b = train_records(straight), train_records(resumed)
    assert [(r["step"], r["lr"], r["loss"]) for r in a if r["step"] > 3] == [(r["step"], r["lr"], r["loss"]) for r in b]
    assert torch.equal(load_file(straight / "model.safetensors")["weight"],
                       load_file(resumed / "model.safetensors")["weight"])


class Planted:
    """What a malicious pickle does: run code when unpickled (here: create a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_holding_a_foreign_file_is_refused_by_name(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(toy_stage(), out, "train.max_steps=2", "train.save_every=1") == 0
    newest = out / "checkpoints" / "step_00000002"
    marker = tmp_path / "pwned"
    (newest / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Planted(marker)))
    capsys.readouterr()
    assert cli(toy_stage(), out, "train.max_steps=3", "--resume", str(newest)) == 2
    assert error_line(capsys) == (f"error: --resume {newest}: custom_checkpoint_0.pkl is not a file this trainer "
                                  f"writes; refusing to resume")
    assert cli(toy_stage(), out, "train.max_steps=3", "--resume", "latest") == 0
    printed = capsys.readouterr().out
    assert "skipping checkpoints/step_00000002: custom_checkpoint_0.pkl is not a file this trainer writes" in printed
    assert "at step 1" in printed
    assert not marker.exists()


def test_a_listed_file_is_only_ever_loaded_as_plain_tensors(tmp_path, capsys):
    # Even a pickle that the manifest vouches for (someone rewrote both) is read with weights_only=True.
    from spark_vlm.training.checkpoint import MANIFEST_FILE, file_record

    assert cli(toy_stage(), tmp_path, "train.max_steps=2", "train.save_every=1") == 0
    newest, marker = tmp_path / "checkpoints" / "step_00000002", tmp_path / "pwned"
    torch.save({"state": Planted(marker)}, newest / "optimizer.bin")
    manifest = json.loads((newest / MANIFEST_FILE).read_text())
    (newest / MANIFEST_FILE).write_text(json.dumps({**manifest, "optimizer.bin": file_record(newest / "optimizer.bin")}))
    capsys.readouterr()
    assert cli(toy_stage(), tmp_path, "train.max_steps=3", "--resume", str(newest)) == 2
    assert error_line(capsys).startswith(f"error: --resume {newest}: the checkpoint does not load (UnpicklingError: ")
    assert not marker.exists()


@pytest.mark.parametrize("damage, why", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-7]),
     "model.safetensors differs from checkpoint_manifest.json"),
    (lambda d: (d / "trainer_state.json").write_text(""), "unreadable trainer_state.json or checkpoint_manifest"),
    (lambda d: (d / "checkpoint_manifest.json").write_text("{not json"), "unreadable trainer_state.json"),
    (lambda d: (d / "optimizer.bin").unlink(), "optimizer.bin is missing"),
    (lambda d: [p.unlink() for p in d.iterdir()], "unreadable trainer_state.json"),  # an empty folder
])
def test_resume_latest_falls_back_past_a_damaged_checkpoint(tmp_path, capsys, damage, why):
    assert cli(toy_stage(), tmp_path, "train.max_steps=4", "train.save_every=2") == 0
    newest = tmp_path / "checkpoints" / "step_00000004"
    damage(newest)
    capsys.readouterr()
    assert cli(toy_stage(), tmp_path, "train.max_steps=6", "train.save_every=2", "--resume", "latest") == 0
    printed = capsys.readouterr().out
    assert f"skipping checkpoints/step_00000004: {why}" in printed
    assert f"resumed from {tmp_path / 'checkpoints' / 'step_00000002'} at step 2" in printed
    assert [r["step"] for r in train_records(tmp_path)] == [1, 2, 3, 4, 5, 6]  # steps 3-4 trained once more


def test_resume_latest_refuses_when_no_checkpoint_is_intact(tmp_path, capsys):
    assert cli(toy_stage(), tmp_path, "train.max_steps=2", "train.save_every=0") == 0
    (tmp_path / "checkpoints" / "step_00000002" / "trainer_state.json").write_text("[]")
    assert cli(toy_stage(), tmp_path, "train.max_steps=4", "--resume", "latest") == 2
    assert "none of the 1 checkpoints" in error_line(capsys)
    assert (tmp_path / "checkpoints" / "step_00000002").is_dir()  # not wiped by a fresh start


def test_a_second_run_into_a_locked_directory_stops_in_one_line(tmp_path, capsys):
    tmp_path.joinpath("run.lock").write_text("pid 4242 on otherhost, started 2026-01-01 00:00:00 UTC\n")
    with open(tmp_path / "run.lock", "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli(toy_stage(), tmp_path, "train.max_steps=2") == 2
        assert error_line(capsys) == (f"error: {tmp_path} is in use by another run (pid 4242 on otherhost, started "
                                      f"2026-01-01 00:00:00 UTC); wait for it to finish or choose another "
                                      f"train.output_dir")
        assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "metrics.jsonl").exists()
    assert cli(toy_stage(), tmp_path, "train.max_steps=2") == 0  # released (as the OS does when a holder dies)
    assert "pid " in (tmp_path / "run.lock").read_text()


def test_a_fresh_run_removes_the_previous_runs_artefacts(tmp_path, capsys):
    for name in ("model.safetensors", "eval_results.json", "trainable.safetensors", "manifest.json", "notes.txt"):
        (tmp_path / name).write_text("old")
    (tmp_path / "checkpoints" / "step_00000009").mkdir(parents=True)

    def export(accelerator, model, run_dir):  # a run killed before it exports anything
        raise KeyboardInterrupt

    build = toy_stage()

    def killed(cfg, accelerator):
        return Stage(**{**build(cfg, accelerator).__dict__, "export": export})

    with pytest.raises(KeyboardInterrupt):
        cli(killed, tmp_path, "train.max_steps=1", "train.save_every=0")
    assert "removing checkpoints, eval_results.json, model.safetensors, trainable.safetensors, manifest.json" in \
        capsys.readouterr().out
    left = {p.name for p in tmp_path.iterdir()}
    assert left.isdisjoint({"model.safetensors", "eval_results.json", "trainable.safetensors", "manifest.json"})
    assert {"notes.txt", "config.yaml", "metrics.jsonl"} <= left  # not ours: kept
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]  # this run's own


class ThreeStreamed(torch.utils.data.IterableDataset):  # e.g. webdataset shards with fewer samples than a batch
    def __iter__(self):
        return iter(ToyPairs()[i] for i in range(3))


@pytest.mark.parametrize("data, message", [
    (ToyPairs, "error: the training data has 32 samples, fewer than one batch (train.batch_size=64 x 1 process(es))"),
    (ThreeStreamed, "error: epoch 0 of the training data gave no full batch of train.batch_size=64"),
])
def test_data_smaller_than_one_batch_stops_in_one_line_instead_of_looping(tmp_path, capsys, data, message):
    # drop_last leaves such an epoch empty: the loop used to start epoch after epoch forever
    assert cli(toy_stage(data=data), tmp_path, "train.max_steps=2", "train.batch_size=64") == 2
    assert error_line(capsys).startswith(message)
    assert not (tmp_path / "metrics.jsonl").exists() or not train_records(tmp_path)

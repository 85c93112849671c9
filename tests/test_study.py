"""The study of issue 14 (spark_vlm/experiments/study.py): its config's one-line errors, the plan and what a rerun
skips, the runner's scheduling, the report's statistics on hand-made result files, and (slow) a micro study that
trains, scores, reports, and after one result file is deleted reruns only that step."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from spark_vlm.experiments import study
from spark_vlm.experiments.plan import build_plan, write_json
from spark_vlm.experiments.runs import RunError, mismatches
from spark_vlm.experiments.study_config import load_study
from spark_vlm.experiments.study_report import (ablation_table, cell, markdown, mean_std, outside_spread,
                                                paper_table)

TINY1 = ["model.image_size=32", "model.patch_size=8", "model.vision_width=32", "model.vision_layers=1",
         "model.vision_heads=2", "model.text_width=32", "model.text_layers=1", "model.text_heads=2",
         "model.embed_dim=16", "model.max_text_len=24", "data.num_train=64", "data.num_val=16", "data.vocab_size=200",
         "optim.warmup_steps=1", "train.precision=fp32", "train.peak_tflops=1", "train.max_steps=3",
         "train.batch_size=8", "train.eval_every=0", "train.save_every=0"]
TINY2 = ["data.num_train=64", "data.num_val=16", "data.max_text_len=40", "lm.standin.width=32", "lm.standin.layers=2",
         "lm.standin.heads=2", "lm.standin.steps=10", "lm.standin.vocab_size=300", "model.xattn_heads=2",
         "model.xattn_dim_head=8", "optim.warmup_steps=1", "train.precision=fp32", "train.peak_tflops=1",
         "train.max_steps=2", "train.batch_size=8", "train.eval_every=0", "train.save_every=0"]


def config(tmp_path, **changes) -> Path:
    cfg = {"name": "micro", "output_dir": str(tmp_path / "study"), "seeds": 2, "objectives": ["clip", "sparc"],
           "stage1": TINY1, "ablations": ["fine_weights=softmax"], "stage2": TINY2, "oracle": True, "test_scenes": 50,
           **changes}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_main(args, capsys):
    capsys.readouterr()
    code = study.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("changes, message", [
    ({"nme": "x"}, "error: nme: unknown key"),
    ({"objectives": ["clip", "dalle"]}, "error: objectives: unknown objective 'dalle' (choose from clip, filip"),
    ({"objectives": ["sparc"]}, "error: objectives: must include clip"),
    ({"objectives": ["clip", "clip"], "ablations": []}, "error: objectives: names an objective twice"),
    ({"objectives": ["clip", "filip"]}, "error: ablations: ablate the paper's SPARC: add sparc to objectives"),
    ({"seeds": 0}, "error: seeds: must be >= 1, got 0"),
    ({"seeds": "two"}, "error: seeds: "),
    ({"test_scenes": 5}, "error: test_scenes: must be >= 50, got 5"),
    ({"name": "a/b"}, "error: name: must be letters, digits and _.+- only"),
    ({"stage1": ["train.max_stepz=3"]}, "error: stage1: train.max_stepz: unknown key"),
    ({"stage1": ["train.seed=3"]}, "error: stage1: train.seed is set by the study, per run; remove 'train.seed=3'"),
    ({"stage1": ["fine_weights=softmax"]}, "error: stage1: loss: the fine_* options change SPARK's fine-grained loss"),
    ({"ablations": ["fine_weights=l2"]}, "error: ablations: fine_weights: "),
    ({"ablations": ["lambda_fine=-1"]}, "error: ablations: lambda_fine: must be >= 0, got -1"),
    ({"stage2": ["train.batch_size=0"]}, "error: stage2: train.batch_size: must be > 0, got 0"),
    ({"stage2": ["vision_checkpoint=oracle"]}, "error: stage2: vision_checkpoint is set by the study"),
])
def test_bad_config_is_one_error_line_and_exit_2(tmp_path, capsys, changes, message):
    code, out, err = run_main(["--config", str(config(tmp_path, **changes)), "--dry-run"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err
    assert not (tmp_path / "study").exists()  # refused before any work


def test_missing_config_file_and_bad_override(tmp_path, capsys):
    code, _, err = run_main(["--config", str(tmp_path / "none.yaml")], capsys)
    assert code == 2 and err.strip() == f"error: config file not found: {tmp_path / 'none.yaml'}"
    code, _, err = run_main(["--config", str(config(tmp_path)), "seeds=-1", "--dry-run"], capsys)
    assert code == 2 and err.strip() == "error: seeds: must be >= 1, got -1"


# ---------------------------------------------------------------------------------------------- plan
def test_plan_has_every_step_once_with_its_inputs(tmp_path):
    steps = build_plan(load_study(config(tmp_path)))
    kinds = [(s.kind, s.label, s.seed) for s in steps]
    assert len(kinds) == len(set(kinds)) == 2 * 2 * 4 + 2 + 2  # (objective, seed) x 4 kinds, 1 ablation, oracle
    by_id = {s.id: s for s in steps}
    for s in steps:
        assert all(n in by_id for n in s.needs) and s.estimate_s > 0
        if s.kind.endswith("_eval"):
            (need,) = s.needs
            assert by_id[need].kind == s.kind.replace("eval", "train") and by_id[need].run_dir == s.run_dir
    sparc2 = next(s for s in steps if (s.kind, s.label, s.seed) == ("stage2_train", "sparc", 1))
    sparc1 = by_id[sparc2.needs[0]]
    assert sparc1.kind == "stage1_train" and f"vision_checkpoint={sparc1.run_dir}" in sparc2.overrides
    assert "train.seed=1" in sparc1.overrides and "train.seed=1" in sparc2.overrides
    ablation = next(s for s in steps if s.label == "ablation fine_weights=softmax" and s.kind == "stage1_train")
    assert ablation.seed == 0 and ablation.overrides[-1] == "train.seed=0"
    assert "fine_weights=softmax" in ablation.overrides
    oracle = [s for s in steps if s.label == "oracle"]
    assert [s.kind for s in oracle] == ["stage2_train", "stage2_eval"] and oracle[0].needs == []
    assert "vision_checkpoint=oracle" in oracle[0].overrides
    assert all(str(s.run_dir).startswith(str(tmp_path / "study" / "runs")) for s in steps)


def test_finished_steps_are_skipped_by_the_plan(tmp_path, capsys):
    path = config(tmp_path, seeds=1, objectives=["clip"], ablations=[], oracle=False)
    steps = build_plan(load_study(path))
    write_json(steps[0].result, {"done": True})
    code, out, _ = run_main(["--config", str(path), "--dry-run"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("done  stage1_train  clip") and lines[1].startswith("todo  stage1_eval   clip")
    assert lines[-1].startswith("3 of 4 steps to do, estimated")
    assert not (tmp_path / "study" / "study.yaml").exists()  # a dry run writes nothing


def test_runner_respects_inputs_and_gives_each_worker_its_own_core(tmp_path, monkeypatch):
    cfg = load_study(config(tmp_path, stage2=TINY2, oracle=True))
    steps = build_plan(cfg)
    running, seen, lock = {}, [], threading.Lock()

    def fake(step, cfg, core, annotations):
        with lock:
            assert all(Path(n).exists() for n in step.needs), step.id
            assert core in (0, 1) and core not in running.values()
            running[step.id] = core
            seen.append(step.id)
        time.sleep(0.05)  # let the other worker's step overlap this one
        with lock:
            del running[step.id]
        write_json(step.result, {"scores": {}})

    monkeypatch.setattr(study, "execute", fake)
    monkeypatch.setattr("spark_vlm.data.coco_export.export_coco", lambda *a, **k: {})
    study.run_steps(steps, cfg, workers=2)
    assert sorted(seen) == sorted(s.id for s in steps)
    seen.clear()
    study.run_steps(steps, cfg, workers=2)  # all done: nothing runs
    assert seen == []


def test_runner_stops_after_a_failed_step_and_skips_what_needs_it(tmp_path, monkeypatch):
    cfg = load_study(config(tmp_path, objectives=["clip"], ablations=[], oracle=False, seeds=1))
    steps = build_plan(cfg)
    ran = []

    def fake(step, cfg, core, annotations):
        ran.append(step.kind)
        if step.kind == "stage1_eval":
            raise RunError("scoring failed; see the log")
        write_json(step.result, {})

    monkeypatch.setattr(study, "execute", fake)
    monkeypatch.setattr("spark_vlm.data.coco_export.export_coco", lambda *a, **k: {})
    with pytest.raises(RunError, match="scoring failed"):
        study.run_steps(steps, cfg, workers=1)
    assert ran[0] == "stage1_train" and "stage1_eval" in ran and "stage2_eval" not in ran[:ran.index("stage1_eval")]
    assert not any(s.done() for s in steps if s.kind == "stage1_eval")


def test_mismatches_compare_overrides_with_the_saved_run_config(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"loss": "sparc", "fine_threshold": 0.0,
                                                          "train": {"max_steps": 4, "batch_size": 8}}))
    assert mismatches(tmp_path, ["train.max_steps=4", "fine_threshold=0", "loss=sparc"]) == {}
    assert mismatches(tmp_path, ["train.max_steps=6", "loss=clip"]) == {"train.max_steps": (4, 6),
                                                                        "loss": ("sparc", "clip")}
    assert mismatches(tmp_path / "new", ["train.max_steps=6"]) == {}


# ---------------------------------------------------------------------------------------------- report
def test_statistics_by_hand():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample std (ddof 1)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert mean_std([4.0, None, 6.0])[0] == 5.0  # a missing value is left out
    # |10 - 5| = 5 > 1 + 1: outside; |6 - 5| = 1 < 2: inside; one seed: no spread to compare
    assert outside_spread([9.0, 10.0, 11.0], [4.0, 5.0, 6.0]) is True
    assert outside_spread([5.0, 6.0, 7.0], [4.0, 5.0, 6.0]) is False
    assert outside_spread([10.0], [4.0, 5.0]) is None
    assert cell([9.0, 10.0, 11.0], [4.0, 5.0, 6.0]) == "10.0 ± 1.0 ▲"
    assert cell([1.0, 2.0, 3.0], [9.0, 10.0, 11.0]) == "2.0 ± 1.0 ▼"
    assert cell([5.0, 6.0, 7.0], [4.0, 5.0, 6.0]) == "6.0 ± 1.0"
    assert cell([10.0], [4.0, 5.0, 6.0]) == "10.0"


def stage1_result(**values) -> dict:
    keys = ["i2t_R@1", "t2i_R@1", "truth_R@1", "truth_R@1_chance", "i2t_truth_R@1", "probes", "probes.blank_image",
            "K-P", "model.mass_in_mask", "uniform.mass_in_mask", "model.pointing", "uniform.pointing",
            "position_only.mass_in_mask", "mIoU.paper", "mIoU.standard"]
    return {k: values.get(k, 10.0) for k in keys}


def stage2_result(**values) -> dict:
    keys = ["CIDEr", "Bleu_4", "ROUGE_L", "CHAIRs", "CHAIRi", "pope_random", "pope_statement_random",
            "pope_statement_random_another", "image_contribution", "object_word_contribution"]
    return {**{k: values.get(k, 10.0) for k in keys}, **{f"blind_{k}": 3.0 for k in keys}}


def test_report_tables_on_hand_made_results(tmp_path):
    stage1 = {"clip": [stage1_result(**{"i2t_R@1": v, "mIoU.paper": 20.0}) for v in (4.0, 5.0, 6.0)],
              "sparc": [stage1_result(**{"i2t_R@1": v, "mIoU.paper": 20.0}) for v in (9.0, 10.0, 11.0)],
              "filip": [stage1_result(**{"i2t_R@1": v}) for v in (1.0, 2.0, 3.0)],
              "ablation lambda_fine=5": [stage1_result(**{"i2t_R@1": 12.5})]}
    stage2 = {"clip": [stage2_result(CIDEr=c) for c in (20.0, 21.0, 22.0)],
              "sparc": [stage2_result(CIDEr=c) for c in (20.5, 21.5, 22.5)], "oracle": [stage2_result(CIDEr=80.0)]}
    cfg = load_study(config(tmp_path, objectives=["clip", "filip", "sparc"], seeds=3))
    text = markdown(cfg, {"stage1": stage1, "stage2": stage2}, ["heatmaps.png"])
    assert "| sparc | 3 | 10.0 ± 1.0 ▲ |" in text and "| filip | 3 | 2.0 ± 1.0 ▼ |" in text
    assert "| clip | 3 | 5.0 ± 1.0 |" in text  # CLIP is the reference: no mark
    assert "| sparc | 3 | 21.50 ± 1.00 (3.00) |" in text  # CIDEr inside the spread, beside the blind baseline
    assert "| oracle | 1 | 80.00 (3.00) |" in text
    assert "| lambda_fine=5 | 12.5 (+3.5) |" in text  # against SPARC's seed 0 (9.0)
    assert "![heatmaps.png](heatmaps.png)" in text and "|mean − CLIP's mean| > std + CLIP's std" in text
    rows = paper_table(stage1, stage2)
    i2t = next(r for r in rows if r.startswith("| COCO i→t R@1 56.2 → 57.6 | +1.4 |"))
    assert i2t.endswith("| 5.0 ± 1.0 | 10.0 ± 1.0 | +5.0 | yes | yes |")
    miou = next(r for r in rows if r.startswith("| Pascal VOC mIoU"))
    assert miou.endswith("| +0.0 | no change | no |")
    filip = next(r for r in rows if r.startswith("| FILIP below CLIP"))
    assert "| -3.0 | yes | yes |" in filip
    assert ablation_table({"clip": stage1["clip"]}) == []  # no ablations: no table


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow  # trains a tiny stage-1 and stage-2 run in subprocesses (~1-2 min on one core)
def test_micro_study_runs_reports_and_resumes_only_the_missing_step(tmp_path, monkeypatch, capsys):
    from inprocess import CACHE_USERS

    monkeypatch.setenv("SPARK_VLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for module in CACHE_USERS:
        monkeypatch.setattr(module, "CACHE_ROOT", tmp_path / "cache")
    path = config(tmp_path, seeds=1, objectives=["clip"], ablations=[], oracle=False)
    code, out, err = run_main(["--config", str(path)], capsys)
    assert code == 0, err[-3000:]
    out_dir = tmp_path / "study"
    for name in ("results.md", "results.json", "training_curves.png", "stage1_scores.png", "chair_vs_cider.png",
                 "heatmaps.png"):
        assert (out_dir / name).stat().st_size > 500, name
    report = json.loads((out_dir / "results.json").read_text())
    (s1,) = report["stage1"]["clip"]
    assert 0 <= s1["i2t_R@1"] <= 100 and 0 <= s1["mIoU.paper"] <= 100 and s1["words"] > 0
    (s2,) = report["stage2"]["clip"]
    assert 0 <= s2["CHAIRi"] <= 100 and s2["blind_CIDEr"] > 0 and 0 <= s2["pope_random"] <= 100
    assert 0 <= s2["pope_statement_random"] <= 100 and 0 <= s2["pope_statement_random_another"] <= 100
    assert "| clip | 1 |" in (out_dir / "results.md").read_text()

    steps = build_plan(load_study(path))
    results = {s.kind: s.result for s in steps}
    before = {k: p.stat().st_mtime_ns for k, p in results.items()}
    train_log = (steps[0].run_dir / "train.log").read_text()
    results["stage1_eval"].unlink()
    code, _, err = run_main(["--config", str(path)], capsys)
    assert code == 0, err[-3000:]
    after = {k: p.stat().st_mtime_ns for k, p in results.items()}
    assert after["stage1_eval"] != before["stage1_eval"]  # the deleted step ran again
    assert {k: v for k, v in after.items() if k != "stage1_eval"} == {k: v for k, v in before.items()
                                                                      if k != "stage1_eval"}
    assert (steps[0].run_dir / "train.log").read_text() == train_log  # no trainer started

    changed = config(tmp_path, seeds=1, objectives=["clip"], ablations=[], oracle=False, test_scenes=60)
    code, _, err = run_main(["--config", str(changed)], capsys)
    assert code == 2 and err.strip() == (f"error: {out_dir} holds a study with another config (test_scenes differ "
                                         f"from {out_dir / 'study.yaml'}); use another name or output_dir")

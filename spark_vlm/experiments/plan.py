"""The study as a list of steps: per (objective, seed) stage-1 train -> stage-1 eval, stage-2 train -> stage-2
eval; per ablation (seed 0) stage-1 train -> eval; the oracle's stage-2 train -> eval. A step is done when its
result file exists (each is written atomically, last), so a rerun skips it and a killed study resumes; the
trainers themselves resume an interrupted run from its latest checkpoint (`--resume latest`)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..training.config import load_config
from .study_config import StudyConfig
from .variants import VARIANTS

KINDS = ("stage1_train", "stage1_eval", "stage2_train", "stage2_eval")
# Seconds on one CPU core of this project's dev machine (measured on the tiny model: a stage-1 run of 400 steps x
# 64 ~ 10 min, a stage-2 run of 1000 x 32 ~ 7 min; in the quick study a run's fixed cost ~60-70 s, scoring 100
# test scenes ~20-40 s for stage 1, ~20 s for stage 2 with CHAIR, caption metrics and POPE). Only for the plan and
# the first ETA: the progress bar rescales them by the steps' measured times as the study runs.
TRAIN_START_S = {1: 60.0, 2: 70.0}  # interpreter, imports, data, set-up and final evaluation of a run
START_S = 20.0  # a scoring step's interpreter, imports and model
SAMPLE_S = {1: 0.023, 2: 0.013}  # per training sample (step x batch)
FILIP_FACTOR = 1.5  # FILIP's B x B x L x P similarities
SCENE_S = {1: 0.15, 2: 0.2}  # per test scene scored
STANDIN_SAMPLE_S = 0.009  # the stand-in LM's pretraining per sample (800 x 64 ~ 7.5 min), once per seed, then cached


@dataclass
class Step:
    kind: str  # one of KINDS
    label: str  # the objective, "ablation <overrides>" or "oracle"
    seed: int
    run_dir: Path  # the run this step trains or scores
    result: Path  # written last, atomically: the step is done when it exists
    overrides: list[str] = field(default_factory=list)  # the trainer's key=value (train steps)
    needs: list[str] = field(default_factory=list)  # results of the steps that must be done first
    estimate_s: float = 0.0

    @property
    def id(self) -> str:
        return str(self.result)

    def done(self) -> bool:
        return self.result.exists()


def _samples(cls, overrides: list[str]) -> int:
    train = load_config(cls, None, overrides).train
    return train.max_steps * train.batch_size * train.grad_accum_steps


def slug(label: str) -> str:
    """A directory name for a label: "ablation lambda_fine=0.5" -> "ablation_lambda_fine-0.5"."""
    return label.replace(" ", "_").replace("=", "-").replace("/", "_")


def build_plan(cfg: StudyConfig) -> list[Step]:
    from ..training.stage1_config import Stage1Config
    from ..training.stage2_config import Stage2Config

    out = Path(cfg.out)
    steps: list[Step] = []

    def stage1(label: str, seed: int, overrides: list[str]) -> Step:
        run = out / "runs" / "stage1" / slug(label) / f"seed{seed}"
        overrides = [*overrides, *cfg.stage1, f"train.seed={seed}"]
        factor = FILIP_FACTOR if "loss=filip" in overrides else 1.0
        train = Step("stage1_train", label, seed, run, out / "results" / "stage1_train" / f"{slug(label)}_seed{seed}.json",
                     overrides, [], TRAIN_START_S[1] + factor * SAMPLE_S[1] * _samples(Stage1Config, overrides))
        score = Step("stage1_eval", label, seed, run, out / "results" / "stage1" / f"{slug(label)}_seed{seed}.json",
                     [], [train.id], START_S + SCENE_S[1] * cfg.test_scenes)
        steps.extend([train, score])
        return train

    def stage2(label: str, seed: int, vision: str, after: list[str]) -> None:
        run = out / "runs" / "stage2" / slug(label) / f"seed{seed}"
        overrides = [*cfg.stage2, f"vision_checkpoint={vision}", f"train.seed={seed}"]
        estimate = TRAIN_START_S[2] + SAMPLE_S[2] * _samples(Stage2Config, overrides)
        lm = load_config(Stage2Config, None, overrides).lm
        if lm.path is None and not any(s.kind == "stage2_train" and s.seed == seed for s in steps):
            # the stand-in LM is trained with train.seed: the first stage-2 run of each seed trains it (if not cached)
            estimate += STANDIN_SAMPLE_S * lm.standin.steps * lm.standin.batch_size
        train = Step("stage2_train", label, seed, run, out / "results" / "stage2_train" / f"{slug(label)}_seed{seed}.json",
                     overrides, after, estimate)
        score = Step("stage2_eval", label, seed, run, out / "results" / "stage2" / f"{slug(label)}_seed{seed}.json",
                     [], [train.id], START_S + SCENE_S[2] * cfg.test_scenes)
        steps.extend([train, score])

    for seed in range(cfg.seeds):
        for name in cfg.objectives:
            first = stage1(name, seed, VARIANTS[name])
            stage2(name, seed, str(first.run_dir), [first.id])
    for item in cfg.ablations:
        stage1(f"ablation {item}", 0, [*VARIANTS["sparc"], *item.split()])
    if cfg.oracle:
        stage2("oracle", 0, "oracle", [])
    return steps


def write_json(path: Path, obj) -> None:
    """Write aside, then rename into place: a reader (or a killed study) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def describe(steps: list[Step]) -> str:
    """The plan as lines: status, kind, run, estimated minutes; then the total still to do."""
    lines = []
    for s in steps:
        status = "done" if s.done() else "todo"
        lines.append(f"{status}  {s.kind:<13} {s.label:<28} seed {s.seed}  ~{s.estimate_s / 60:5.1f} min  {s.run_dir}")
    todo = [s for s in steps if not s.done()]
    lines.append(f"{len(todo)} of {len(steps)} steps to do, estimated {sum(s.estimate_s for s in todo) / 60:.0f} min "
                 f"on one CPU core ({sum(s.estimate_s for s in steps) / 60:.0f} min for the whole plan); "
                 "with --workers 2 up to about half")
    return "\n".join(lines)

"""The study's config (issue 14): what is compared, over how many seeds, at what size. Loaded like the trainers'
configs (training/config.py: defaults <- YAML <- key=value) and checked before any work: every stage-1 / stage-2
override list is loaded into its stage's config here, so a bad key or value is one line naming it."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..training.config import ConfigError, check, load_config
from .variants import VARIANTS

# The paper's ablations of SPARC (Bica et al. 2024, Table 6): no sparsity threshold, softmax weights, lambda_f.
PAPER_ABLATIONS = ["fine_threshold=0", "fine_weights=softmax", "lambda_fine=0.5", "lambda_fine=5",
                   "lambda_fine=10"]
SET_BY_THE_STUDY = ("train.output_dir", "train.seed", "vision_checkpoint")


@dataclass
class StudyConfig:
    name: str = "study"
    output_dir: str | None = None  # null = reports/<name>; the runs go to <output_dir>/runs (git-ignored)
    seeds: int = 3  # train.seed 0..seeds-1 for every objective, both stages
    objectives: list[str] = field(default_factory=lambda: ["clip", "filip", "sparc", "sparc+centre"])
    stage1: list[str] = field(default_factory=list)  # key=value for every stage-1 run (steps, batch size, model...)
    # Stage-1 runs of the paper's SPARC with one change each (key=value, several separated by spaces), seed 0 only;
    # scored like the objectives, not taken to stage 2.
    ablations: list[str] = field(default_factory=lambda: list(PAPER_ABLATIONS))
    stage2: list[str] = field(default_factory=list)  # key=value for every stage-2 run (the same LM and recipe)
    oracle: bool = True  # add the oracle vision tower's stage-2 run (seed 0): the recipe's upper bound
    test_scenes: int = 500  # held-out test scenes for every score (retrieval, grounding, CHAIR, POPE, ...)
    launcher: str | None = None  # what runs the trainers, e.g. "accelerate launch --num_processes 4"; null = python

    @property
    def out(self) -> str:
        return self.output_dir or f"reports/{self.name}"

    def validate(self, prefix: str = "") -> None:
        from ..training.stage1_config import Stage1Config
        from ..training.stage2_config import Stage2Config

        check(re.fullmatch(r"[A-Za-z0-9_.+-]+", self.name) is not None, "name",
              f"must be letters, digits and _.+- only (it names a directory), got {self.name!r}")
        check(self.seeds >= 1, "seeds", f"must be >= 1, got {self.seeds}")
        # POPE draws absent objects from the scored scenes: too few scenes leave none to ask about.
        check(self.test_scenes >= 50, "test_scenes", f"must be >= 50, got {self.test_scenes}")
        check(bool(self.objectives), "objectives", "must name at least one objective")
        for name in self.objectives:
            check(name in VARIANTS, "objectives", f"unknown objective {name!r} (choose from {', '.join(VARIANTS)})")
        check(len(set(self.objectives)) == len(self.objectives), "objectives", "names an objective twice")
        check("clip" in self.objectives, "objectives", "must include clip: every score is compared with CLIP's")
        check(not self.ablations or "sparc" in self.objectives, "ablations",
              "ablate the paper's SPARC: add sparc to objectives (the ablations are compared with it)")
        for key, items in (("stage1", self.stage1), ("stage2", self.stage2)):
            for item in items:
                check(item.split("=", 1)[0] not in SET_BY_THE_STUDY, key,
                      f"{item.split('=', 1)[0]} is set by the study, per run; remove {item!r}")
        for name in self.objectives:
            _load(Stage1Config, "stage1", [*VARIANTS[name], *self.stage1])
        for item in self.ablations:
            check(bool(item.split()), "ablations", "an empty ablation")
            _load(Stage1Config, "ablations", [*self.stage1, *item.split()])
        check(len(set(self.ablations)) == len(self.ablations), "ablations", "names an ablation twice")
        _load(Stage2Config, "stage2", self.stage2)


def _load(cls, key: str, overrides: list[str]) -> None:
    try:
        load_config(cls, None, overrides)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None


def load_study(path, overrides: list[str] = ()) -> StudyConfig:
    return load_config(StudyConfig, path, overrides)

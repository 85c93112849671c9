"""Experiments over many runs: the objectives compared (variants.py), one stage-1 / stage-2 run trained as a
subprocess of its trainer and scored (runs.py, stage1_scores.py, stage2_scores.py), and the study of issue 14
(study_config.py, plan.py, study.py, study_report.py, study_plots.py). benchmarks/grounding_sweep.py and
benchmarks/stage2_scores.py are thin callers of the same functions."""

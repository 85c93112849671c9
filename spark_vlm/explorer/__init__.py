"""A local explorer page for a stage-1/stage-2 run pair: `python -m spark_vlm.explorer` (see __main__.py)."""

"""Resuming a stage-2 checkpoint checks the frozen parts it was trained on (checkpoints leave their weights out)."""
import json

from spark_vlm.training.checkpoint import STATE_FILE, frozen_mismatch

VISION = {"source": "/runs/stage1", "sha256": "a" * 64}
LM = {"source": "/lms/gpt2", "sha256": "b" * 64}


def write_state(path, **state):
    path.mkdir(parents=True, exist_ok=True)
    (path / STATE_FILE).write_text(json.dumps({"step": 2, "epoch": 0, "batches_into_epoch": 2, **state}))
    return path


def test_same_frozen_parts_resume(tmp_path):
    ckpt = write_state(tmp_path / "step_2", frozen={"vision": VISION, "lm": LM})
    assert frozen_mismatch(ckpt, {"vision": VISION, "lm": LM}) is None
    assert frozen_mismatch(ckpt, None) is None  # a stage without frozen parts (stage 1) checks nothing


def test_a_different_frozen_part_is_refused_by_name(tmp_path):
    ckpt = write_state(tmp_path / "step_2", frozen={"vision": VISION, "lm": LM})
    other_lm = {"source": "/lms/llama", "sha256": "c" * 64}
    msg = frozen_mismatch(ckpt, {"vision": VISION, "lm": other_lm})
    assert msg.startswith(f"--resume {ckpt}: frozen lm mismatch") and "'/lms/gpt2'" in msg and "'/lms/llama'" in msg
    assert "\n" not in msg
    # The same source path with other weights in it is still a mismatch: the hash decides, not the path.
    msg = frozen_mismatch(ckpt, {"vision": {**VISION, "sha256": "d" * 64}, "lm": LM})
    assert "frozen vision mismatch" in msg


def test_a_checkpoint_without_hashes_is_refused(tmp_path):
    ckpt = write_state(tmp_path / "step_2")
    assert "does not record its frozen parts' hashes" in frozen_mismatch(ckpt, {"vision": VISION, "lm": LM})

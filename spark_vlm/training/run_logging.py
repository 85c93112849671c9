"""Run logs: one JSON object per line in `metrics.jsonl`, mirrored to TensorBoard when it is installed."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


class MetricsLogger:
    """Appends records to `<run_dir>/metrics.jsonl` and TensorBoard scalars.

    A run resumed from the checkpoint of step S first drops what the interrupted run logged after S (those steps
    are about to be trained again), so that every step appears once in the log and once in TensorBoard."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 resumed_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_step is not None:
            truncate_metrics(self.path, resumed_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resumed_step is None else resumed_step + 1  # TensorBoard hides events >= purge
                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=purge)
            except ImportError:  # tensorboard is optional
                self.tb = None

    def log(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if key not in ("step", "time", "kind") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep the records of steps <= `last_step` (and drop a line cut short by a crash); returns how many were
    dropped. The file is rewritten aside and renamed into place, so a crash here loses nothing."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return dropped

"""A rank of a multi-process launch dies with its launcher, so that no orphan keeps training and writing.

torch's elastic agent (behind `accelerate launch --multi_gpu` and DeepSpeed's single-node launch) starts each
rank in a session of its own, so `kill -9` of the launcher, or of its whole process group, leaves the ranks
running. A rank that dies on its own is handled by the agent (it stops the other ranks); this covers the launcher.

Two guards: Linux's PR_SET_PDEATHSIG (the kernel sends SIGKILL when the parent goes), and a daemon thread that
polls the parent pid, which also covers what the kernel signal misses (a parent that was already gone before the
call, a spawning thread that exited, other systems). SIGKILL and `os._exit` are safe for the run directory:
checkpoints are written aside and renamed into place (checkpoint.py).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(poll_s: float = 1.0) -> None:
    """From now on, this process ends within about `poll_s` seconds of its parent's death."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no libc symbol: the poll below still works
            pass
    threading.Thread(target=_watch, args=(parent, poll_s), daemon=True, name="parent-watchdog").start()


def _watch(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    print(f"error: the launcher (pid {parent}) is gone; stopping rank {os.environ.get('RANK', '?')}",
          file=sys.stderr, flush=True)
    os._exit(1)


def in_multiprocess_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1

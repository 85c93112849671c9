"""`accelerate launch` without the launcher's own traceback: `python -m spark_vlm.launch ARGS` takes exactly the
arguments of `accelerate launch ARGS`.

When a rank fails, `accelerate launch` raises on top of the rank's own output: a CalledProcessError traceback (one
process, DeepSpeed) or torch elastic's ChildFailedError report (several processes), ~30 lines under the rank's one
`config error:` / `error:` line, and exit code 1 instead of the rank's 2. Here the launcher says nothing when a
rank stopped with exit code 2 (it has printed its own line), one line for any other failure (the rank's own
traceback stays above it), and exits with the rank's code.
"""
from __future__ import annotations

import logging
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # torch elastic also logs each failure ("failed (exitcode: 2) local_rank: 0 ..."); the line below replaces it.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    args = launch_command_parser().parse_args(argv)
    try:
        launch_command(args)
    except subprocess.CalledProcessError as e:
        return failed(e.returncode, "the training process")
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        return failed(failure.exitcode, f"rank {rank} (pid {failure.pid})")
    return 0


def failed(code: int, who: str) -> int:
    if code != 2:  # 2: a bad config or setup, already explained by the rank in one line
        print(f"error: {who} failed with exit code {code} (its output is above)", file=sys.stderr)
    return code if code > 0 else 1  # a signal shows as a negative code


if __name__ == "__main__":
    sys.exit(main())

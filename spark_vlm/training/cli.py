"""The command line both trainers share: `[--config FILE] [--resume latest|DIR] [key=value ...]`."""
from __future__ import annotations

import argparse
import os
import sys
import time

from .config import ConfigError, load_config
from .errors import SetupError
from .run import train
from .watchdog import die_with_parent, in_multiprocess_launch

WAIT_FOR_RANK0_S = 10.0  # see the ConfigError branch of run_cli


def run_cli(config_cls, build_stage, doc: str, argv=None) -> int:
    """Parse, validate the config before any work (one error line naming the key), then train the stage."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML experiment config: what differs from the defaults")
    parser.add_argument("--resume", help="'latest' or a checkpoint directory")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=64")
    args = parser.parse_args(argv)
    if in_multiprocess_launch():  # a killed launcher must not leave this rank training on as an orphan
        die_with_parent()
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
    except ConfigError as e:
        if os.environ.get("RANK", "0") == "0":  # every rank reads the same config: one line, not one per rank
            print(f"config error: {e}", file=sys.stderr)
        else:
            # The launcher stops every rank as soon as one exits: a silent rank that exited first could stop
            # rank 0 before its line is written (seen under load). Waiting lets rank 0 exit first; the launcher
            # then stops this rank at once, so the wait costs nothing when all goes as expected.
            time.sleep(WAIT_FOR_RANK0_S)
        return 2
    try:
        train(cfg, build_stage, resume=args.resume)
    except SetupError as e:  # problems the user fixes with a command, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

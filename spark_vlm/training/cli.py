"""The command line both trainers share: `[--config FILE] [--resume latest|DIR] [key=value ...]`."""
from __future__ import annotations

import argparse
import os
import sys

from .config import ConfigError, load_config
from .errors import SetupError
from .run import train
from .watchdog import die_with_parent, in_multiprocess_launch


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
        return 2
    try:
        train(cfg, build_stage, resume=args.resume)
    except SetupError as e:  # problems the user fixes with a command, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

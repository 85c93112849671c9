"""The command line both trainers share: `[--config FILE] [--resume latest|DIR] [key=value ...]`."""
from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config


def run_cli(config_cls, train_fn, doc: str, argv=None, expected_errors: tuple = ()) -> int:
    """Parse, validate the config before any work (one error line naming the key), then train."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML experiment config (default: the built-in tiny config)")
    parser.add_argument("--resume", help="'latest' or a checkpoint directory")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.batch_size=64")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        train_fn(cfg, resume=args.resume)
    except expected_errors as e:  # problems the user fixes with a command, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0

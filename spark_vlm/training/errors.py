"""The one exception a training run turns into a single `error:` line and exit code 2 (cli.py)."""


class SetupError(RuntimeError):
    """A problem the user fixes with a command (e.g. "run stage 1 first", "resume another checkpoint"), or a run
    that stopped on purpose (e.g. too many non-finite steps): one line, exit 2, no traceback."""

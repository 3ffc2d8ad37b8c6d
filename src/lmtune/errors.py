"""The one error type users see: a clear message, exit code 2, no traceback."""
from __future__ import annotations


class LmtuneError(Exception):
    """Bad input from the user (config, data, paths). The CLI prints it and exits 2."""

    exit_code = 2


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGINT after writing a checkpoint; exit 128 + signum."""

    def __init__(self, signum: int, checkpoint: object):
        import signal

        self.exit_code = 128 + signum
        self.checkpoint = checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint: {checkpoint}")


def where(path: object, line: int | None = None) -> str:
    """Format a location as `path:line` (or just `path`) for error messages."""
    return f"{path}:{line}" if line is not None else str(path)

"""The one error type users see: a clear message, exit code 2, no traceback."""
from __future__ import annotations


class LmtuneError(Exception):
    """Bad input from the user (config, data, paths). The CLI prints it and exits 2."""

    exit_code = 2


class ConfigError(LmtuneError):
    """A bad value for one key; the loader adds the full dotted key and its file:line."""

    def __init__(self, key: str, msg: str):
        super().__init__(msg)
        self.key, self.msg = key, msg


class Interrupted(Exception):
    """Training stopped after writing a checkpoint: on SIGTERM/SIGINT (exit 128 + signum), or
    because the caller's stop hook asked (signum 0, exit 1)."""

    def __init__(self, signum: int, checkpoint: object):
        import signal

        self.exit_code = 128 + signum if signum else 1
        self.checkpoint = checkpoint
        why = signal.Signals(signum).name if signum else "request"
        super().__init__(f"stopped by {why}; checkpoint: {checkpoint}")


def where(path: object, line: int | None = None) -> str:
    """Format a location as `path:line` (or just `path`) for error messages."""
    return f"{path}:{line}" if line is not None else str(path)

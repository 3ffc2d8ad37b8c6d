"""Metric loggers. The loop writes rows; reports read them later (training never imports
reporting)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol


class Logger(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    """`metrics.jsonl`: one JSON object per line, each written whole and flushed."""

    def __init__(self, path: Path):
        self._f = open(path, "a", encoding="utf-8")

    def log(self, row: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in row.items()}
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class NullLogger:
    """For processes that must not write (ranks other than 0)."""

    def log(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Tee:
    """Every row to each of several loggers (the run's metrics.jsonl and a caller's own)."""

    def __init__(self, *loggers: Logger):
        self.loggers = loggers

    def log(self, row: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(row)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()

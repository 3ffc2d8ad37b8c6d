"""The run dir: config.yaml, metrics.jsonl, model/, eval.json. Every file lands atomically."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

from lmtune.config import Config, config_yaml
from lmtune.errors import LmtuneError


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same dir, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temp dir, then swap it in for `final` (old contents removed).

    A failed write (disk full, permission denied) removes the temp dir, leaves `final` as it
    was, and is an LmtuneError, not a traceback.
    """
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp"))
    try:
        write(tmp)
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors reports a failed write as its own error type, "... I/O error: ..."
        if isinstance(e, OSError) or "I/O error" in str(e):
            raise LmtuneError(f"{final}: could not write it "
                              f"({getattr(e, 'strerror', None) or e})") from None
        raise


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    # These say how to treat the run dir, not what the run is.
    return {k: v for k, v in cfg_dict.items() if k not in ("overwrite", "resume", "output_dir")}


def check_run_dir(cfg: Config) -> Path:
    """Refuse to reuse a run dir that holds a different run, unless `overwrite=true`.

    Only checks; nothing is created here, so a run that fails validation later leaves no trace.
    """
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise LmtuneError(f"output_dir {out}: exists and is not a directory")
    old_cfg = out / "config.yaml"
    if old_cfg.exists() and not cfg.overwrite:
        try:
            old = yaml.safe_load(old_cfg.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict) or _comparable(old) != _comparable(cfg.to_dict()):
            if cfg.resume:
                raise LmtuneError(f"output_dir {out}: resume=true needs the config the run "
                                  f"started with (see {old_cfg}); this one differs")
            raise LmtuneError(f"output_dir {out}: holds a run with a different config; choose "
                              "another output_dir or set overwrite=true to replace it")
    return out


def start_run_dir(cfg: Config) -> Path:
    """Create the run dir and write config.yaml; a fresh run starts with an empty
    metrics.jsonl and no checkpoints (an old run's would resume into the wrong config)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", config_yaml(cfg))
    (out / "metrics.jsonl").unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return out


def rewind_metrics(path: Path, step: int) -> None:
    """Keep the training rows of `metrics.jsonl` up to `step`, for a run resumed there.

    Rows past `step` come again from the resumed run. A torn last line (a crash in the middle
    of a write) is dropped with a warning instead of breaking every later reader.
    """
    if not path.exists():
        return
    kept = []
    lines = path.read_bytes().split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            if i == len(lines) - 1 or not any(x.strip() for x in lines[i + 1:]):
                print(f"warning: {path}:{i + 1}: dropped a torn last line", file=sys.stderr)
                continue
            raise LmtuneError(f"{path}:{i + 1}: not valid JSON; cannot resume its log") \
                from None
        if isinstance(row, dict) and row.get("step", 0) <= step and row.get("split") != "test":
            kept.append(json.dumps(row) + "\n")
    atomic_write_text(path, "".join(kept))

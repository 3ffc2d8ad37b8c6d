"""The run dir: writing it (every file lands atomically) and reading it back (`open_run`).

    RUN_DIR/config.yaml        the fully resolved config
           metrics.jsonl       one row per log window, validation and test pass
           data_report.json    what the loss saw (language-model tasks)
           checkpoints/        see checkpoint.py
           model/              an HF model dir, or a PEFT adapter dir with the base config
           eval.json           test metrics (`lmtune eval` rewrites it)
           summary.json        steps, time, throughput, best step, test metrics, peak memory
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from lmtune.config import Config, config_yaml, load_config
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


# ----------------------------------------------------------------------------- reading


@dataclass
class SavedRun:
    """What loading needs from a run dir, or from a bare model (HF dir, hub id, alias)."""

    config: Config | None  # None: a bare model, not a run dir
    model_dir: Path
    base: str  # the model an adapter applies to
    trust: bool

    @property
    def task(self):
        """The run's task object; a bare model's comes from its architecture name."""
        from lmtune.tasks import get_task, task_of_model

        if self.config is None:
            return task_of_model(self.model_dir)
        return get_task(self.config.task).for_run(self.config)

    @property
    def mergeable(self) -> bool:
        """Whether the saved weights are an adapter that folds into its base."""
        from lmtune.methods import get_method

        return bool(self.config) and get_method(self.config.method).mergeable

    def load(self, attention: str | None = None, cache_dir: str = "", merge: bool = False):
        """(model, tokenizer) in eval mode, loaded as the task's model class, the base
        quantized as in training; `attention` None: as the run was trained (`auto` picks
        per task and device). `merge`: an adapter folded into its (dequantized) base."""
        from lmtune import runtime
        from lmtune.models.io import load_saved
        from lmtune.models.load import attention_impl

        task = self.task
        if attention is None:
            attention = attention_impl(self.config.attention if self.config else "auto",
                                       runtime.device_type(), task.eager_on_cpu)
        return load_saved(self.model_dir, self.base, self.trust, attention,
                          auto_class=task.model_class,
                          cache_dir=cache_dir or (self.config.cache_dir if self.config else ""),
                          quantize=self.config.quantization if self.config else "none",
                          keep=task.head_modules, merge=merge and self.mergeable)


def open_run(path: str | Path, cache_dir: str = "") -> SavedRun:
    """A run dir (with config.yaml), a bare HF model dir, or an alias/hub id resolved to one."""
    from lmtune.models.load import resolve_model

    p = Path(path)
    if (p / "config.yaml").exists():
        config = load_config(p / "config.yaml")
        return SavedRun(config, p / "model", config.model, config.trust_remote_code)
    if p.is_dir():  # a bare HF model dir (full fine-tune) has no base to resolve
        return SavedRun(None, p, str(p), False)
    resolved = Path(resolve_model(str(path), cache_dir))
    if not resolved.is_dir():
        raise LmtuneError(f"{path}: not a run dir, a model dir or an alias")
    return SavedRun(None, resolved, str(resolved), False)

"""Checkpoints: weights + optimizer + scheduler + RNG + data position; atomic; resume.

    RUN_DIR/checkpoints/
      step-000120/
        trainable.safetensors  the trainable tensors (all of them for `full`; adapter + head
                               for `lora`); frozen ones come back from the base model
        best.safetensors       the best trainable tensors so far, when not these
        optimizer.pt           optimizer + LR scheduler state, and a method's own state
                               between steps (AdaLoRA) (read with weights_only=True)
        rng-R.pt               python, numpy, torch (and CUDA) RNG states of rank R
        progress.json          step, epoch, position in the epoch, counters, best metrics
        shards/                train.distributed=fsdp|deepspeed: the trainable weights, AdamW
                               state and best weights, each rank's shards (written by
                               torch.distributed.checkpoint, or DeepSpeed's own files),
                               instead of the three files above
        manifest.json          sha256 of every file above; written last

A checkpoint is filled in `.tmp-step-N/`, every file fsynced, then renamed into place, so a
crash leaves either the whole checkpoint or none. A checkpoint whose manifest is missing or
whose hashes disagree is skipped on resume with a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lmtune.errors import LmtuneError

MANIFEST = "manifest.json"
SHARDS = "shards"


@dataclass
class Loaded:
    path: Path
    progress: dict[str, Any]
    trainable: dict[str, torch.Tensor] | None  # None: sharded (in `shards`)
    best: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    shards: Path | None = None
    method: dict[str, Any] | None = None  # a method's own state between steps (AdaLoRA)


# ----------------------------------------------------------------------------- saving


def save(root: Path, step: int, *, trainable: dict[str, torch.Tensor] | None,
         best: dict[str, torch.Tensor] | None, optimizer: dict | None, scheduler: dict,
         rngs: list[dict], progress: dict[str, Any], keep: int, best_step: int | None,
         shards: Callable[[Path], None] | None = None, rank: int = 0,
         method: dict | None = None) -> Path | None:
    """Write checkpoint `step-{step}` atomically; then keep the newest `keep` and the best.

    Sharded (`shards` given, `trainable`/`best`/`optimizer` None): every rank calls this;
    `shards(dir)` is the collective in which each rank writes its part, then rank 0 writes
    the rest and the manifest, and renames (the others return None).

    On a failed write (disk full, permission denied) the partial temp dir is removed and an
    LmtuneError says so; earlier checkpoints are untouched.
    """
    from safetensors.torch import save_file

    final = step_dir(root, step)
    tmp = root / f".tmp-step-{step:06d}"
    try:
        if rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        if shards is not None:
            torch.distributed.barrier()  # the temp dir exists for every rank
            shards(tmp / SHARDS)
            torch.distributed.barrier()  # every rank's files are written
            if rank != 0:
                return None
        writers: dict[str, Callable[[Path], None]] = {
            "optimizer.pt": lambda p: torch.save({"optimizer": optimizer, "scheduler": scheduler,
                                                  "method": method}, p),
            "progress.json": lambda p: p.write_text(json.dumps(progress, indent=1)),
        }
        if trainable is not None:
            writers["trainable.safetensors"] = lambda p: save_file(_contiguous(trainable), p)
        if best is not None:
            writers["best.safetensors"] = lambda p: save_file(_contiguous(best), p)
        for r, state in enumerate(rngs):
            writers[f"rng-{r}.pt"] = lambda p, state=state: torch.save(state, p)
        hashes = {name: _write_synced(tmp / name, write) for name, write in writers.items()}
        if shards is not None:  # written by every rank; hashed (and fsynced) here
            files = sorted(f for f in (tmp / SHARDS).rglob("*") if f.is_file())
            hashes |= {f.relative_to(tmp).as_posix(): _write_synced(f, lambda p: None)
                       for f in files}
            for d in {f.parent for f in files}:
                _fsync_dir(d)
        _write_synced(tmp / MANIFEST, lambda p: p.write_text(json.dumps(
            {"step": step, "files": hashes}, indent=1)))
        _fsync_dir(tmp)
        if final.exists():  # the same step again (e.g. resumed past a torn newer one)
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync_dir(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        last = next(iter(valid_checkpoints(root, warn=False)), None)
        kept = f"the last good checkpoint {last.name} is intact" if last else \
            "no earlier checkpoint exists"
        raise LmtuneError(f"checkpoint {final}: could not write it "
                          f"({e.strerror or e}); {kept}") from None
    prune(root, keep, best_step)
    return final


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _write_synced(path: Path, write: Callable[[Path], None]) -> str:
    """Write `path` with `write`, fsync it, and return its sha256."""
    write(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
        os.fsync(f.fileno())
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(root: Path, keep: int, best_step: int | None) -> None:
    """Delete all but the newest `keep` checkpoints and the one at `best_step`."""
    steps = sorted(_step_of(p) for p in root.glob("step-*") if _step_of(p) is not None)
    for step in steps[:-keep]:
        if step != best_step:
            shutil.rmtree(step_dir(root, step), ignore_errors=True)


def step_dir(root: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives under `root`."""
    return root / f"step-{step:06d}"


def _step_of(path: Path) -> int | None:
    tail = path.name.removeprefix("step-")
    return int(tail) if path.name.startswith("step-") and tail.isdigit() else None


# ---------------------------------------------------------------------------- loading


def valid_checkpoints(root: Path, warn: bool = True) -> list[Path]:
    """Checkpoints under `root` whose manifest and hashes check out, newest first."""
    found = sorted((p for p in root.glob("step-*") if _step_of(p) is not None),
                   key=_step_of, reverse=True) if root.is_dir() else []
    good = []
    for path in found:
        problem = check(path)
        if problem is None:
            good.append(path)
        elif warn:
            print(f"warning: skipping checkpoint {path}: {problem}", file=sys.stderr)
    return good


def check(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be used, or None when it is whole."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "missing or unreadable manifest.json"
    for name, expected in files.items():
        p = path / name
        if not p.is_file():
            return f"missing file {name}"
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            return f"{name} does not match its sha256 in manifest.json"
    return None


def _progress(path: Path) -> dict[str, Any]:
    return json.loads((path / "progress.json").read_text(encoding="utf-8"))


def world_size(root: Path) -> int:
    """How many processes wrote the newest valid checkpoint under `root` (1 if none)."""
    newest = next(iter(valid_checkpoints(root, warn=False)), None)
    return 1 if newest is None else _progress(newest).get("world_size", 1)


def load_latest(root: Path, rank: int, world: int, distributed: str = "ddp"
                ) -> Loaded | None:
    """The newest valid checkpoint under `root`, or None when there is none.

    `distributed` names how the state was split over the processes (`progress.json`'s
    "distributed": ddp, fsdp or deepspeed-zeroN); resuming needs the same."""
    from safetensors.torch import load_file

    for path in valid_checkpoints(root):
        progress = _progress(path)
        if progress.get("world_size", 1) != world:
            raise LmtuneError(f"checkpoint {path}: written by {progress.get('world_size')} "
                              f"processes; resume with the same number (got {world}); "
                              "`lmtune resume RUN_DIR` starts as many")
        # Checkpoints from before the key: shards/ meant fsdp.
        written = progress.get("distributed", "fsdp" if (path / SHARDS).is_dir() else "ddp")
        if written != distributed:
            raise LmtuneError(f"checkpoint {path}: written with {_strategy(written)} over "
                              f"{world} processes; this run uses {_strategy(distributed)}. "
                              "Resume with the same")
        try:
            opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
            rng = torch.load(path / f"rng-{rank}.pt", weights_only=True)
        except Exception as e:  # noqa: BLE001 - an unpickling refusal has many types
            raise LmtuneError(f"checkpoint {path}: refused to load its state "
                              f"(only plain tensors and numbers are read): {e}") from None
        if distributed != "ddp":  # weights and optimizer state are read into the sharded model
            return Loaded(path, progress, None, None, None, opt["scheduler"], rng,
                          path / SHARDS, opt.get("method"))
        best = path / "best.safetensors"
        return Loaded(path, progress, load_file(path / "trainable.safetensors"),
                      load_file(best) if best.exists() else None,
                      opt["optimizer"], opt["scheduler"], rng, method=opt.get("method"))
    return None


def _strategy(distributed: str) -> str:
    """`progress.json`'s "distributed" in config terms."""
    if distributed.startswith("deepspeed-zero"):
        return f"train.distributed=deepspeed train.zero_stage={distributed[-1]}"
    return f"train.distributed={distributed}"


# -------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Every RNG state the loop may draw from, in a form `weights_only` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ------------------------------------------------------------------------------ signals


class StopRequest:
    """Turns SIGTERM/SIGINT, or a caller's `hook` returning True, into a request the loop
    honours after the current step.

    A second SIGINT gives up at once (KeyboardInterrupt), as users expect of Ctrl-C twice.
    Handlers are only installed in the main thread, where Python allows them (a server runs
    training in a worker thread and stops it through the hook).
    """

    def __init__(self, hook: Callable[[], bool] | None = None) -> None:
        self.signum = 0
        self.hook = hook
        self._old: dict[int, Any] = {}

    def asked(self) -> float:
        """The signal number, 0.5 where only the hook asked, 0 where nothing did (a number,
        so ranks can agree on it with one max-reduction)."""
        if self.signum:
            return float(self.signum)
        return 0.5 if self.hook is not None and self.hook() else 0.0

    def __enter__(self) -> "StopRequest":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then checkpointing",
              file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

"""Calibrations: run `probe.py` for a model, method and precision on this machine, once,
and keep the measurements under cache_dir/plan, keyed by everything that changes them
(the machine, the library versions, the model's files, the settings a step depends on).
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from lmtune import runtime
from lmtune.config import Config, cache_root
from lmtune.data.cache import digest_model_files
from lmtune.errors import LmtuneError
from lmtune.plan.model import Calibration
from lmtune.plan.probe import PROGRESS

# Which settings of a run change what one step of a given shape costs (batch size, lengths,
# epochs and the data do not: the probe's shapes are its own).
STEP_KEYS = ("task", "method", "quantize", "attention", "trust_remote_code",
             "train.precision", "train.dropout", "train.gradient_checkpointing",
             "train.threads", "data.multi_label")
# A probe's largest batch holds about this many parameter-tokens (4,096 tokens for MiniLM,
# 512 for SmolLM2): near the batches runs use, so the fit extrapolates little (per-token
# costs grow once activations outgrow the CPU's caches), and a step of either takes a few
# seconds on a laptop CPU.
PROBE_TOKEN_BUDGET = 1e11
# Raised whenever what the probe measures changes (its shapes, where its base is read), so a
# calibration of an older lmtune is measured again rather than mixed with the new model.
# (Versions 3 and 4 also read a speed reference; never released. Version 5 keeps the mean
# of a shape's timed steps, where 4 kept the fastest; 6 adds width 32, 7 width 256 with a
# quarter of it trained; 8 times the start, a checkpoint and the final save; 9 the steps
# after the start and after a validation; 10 adds width 16 and the first step of each shape;
# 11 takes the repeats in rounds over the shapes.)
PROBE_VERSION = 11


def step_settings(cfg: Config) -> dict:
    d = cfg.to_dict()
    out = {}
    for key in STEP_KEYS:
        section, _, name = key.partition(".")
        out[key] = d[section][name] if name else d[section]
    out["method_settings"] = [d["lora"], d["freeze"], d["prompt"]]
    return out


def machine() -> dict:
    env = runtime.environment()
    return {k: env.get(k) for k in ("cpu", "cores", "bf16", "gpu", "torch", "transformers",
                                    "peft", "lmtune")}


def calibration_key(cfg: Config, model_path: str, labels: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([PROBE_VERSION, machine(), step_settings(cfg), labels], sort_keys=True,
                        default=str).encode())
    digest_model_files(model_path, h)
    return h.hexdigest()


def probe_points(params: int, max_width: int) -> list[tuple[int, int, int]]:
    """(rows, width, trained tokens per row) for the probe: two batch sizes at widths 16,
    32, 64 and 128, and half the rows at width 256 where the model takes it, each width with
    all of its tokens trained (a language-model loss) and with a quarter of them. A step's
    memory and time are not linear in the width on a CPU (attention, and the allocator), so
    the fit must see the widths that instruction data reaches rather than extrapolate to
    them, and the short batches of sentence classification (most are 16-24 tokens wide),
    where the fixed cost of a step (which a line through the larger shapes underestimates:
    autocast's casts of the weights, the layers' Python) is a large part of it. At the
    widest width, where the attention term is largest, only the two trained fractions tell
    it from the vocabulary's (instruction data trains a tenth of its tokens or less)."""
    w00, w0, w1, w2, w3 = (min(w, max_width) for w in (16, 32, 64, 128, 256))
    per = PROBE_TOKEN_BUDGET / max(params, 1) / w2
    rows = min(32, max(2, 1 << int(max(per, 1)).bit_length() - 1))
    half = rows // 2
    # The first six in this order: `probe.mixed_steps` mixes them by position.
    out = [(half, w1, w1), (rows, w1, w1 // 4), (half, w2, w2), (rows, w2, w2 // 4),
           (rows, w2, w2)]
    out += [(half, w3, w3), (half, w3, w3 // 4)] if w3 > w2 else []
    out += [(half, w0, w0), (rows, w0, w0 // 4)] if w0 < w1 else []
    return out + [(half, w00, w00), (rows, w00, w00 // 4)] if w00 < w0 else out


def calibration_path(cfg: Config, model_path: str, labels: int) -> Path:
    key = calibration_key(cfg, model_path, labels)
    return cache_root(cfg.cache_dir) / "plan" / f"{key}.json"


def cached(cfg: Config, model_path: str, labels: int) -> Calibration | None:
    path = calibration_path(cfg, model_path, labels)
    try:
        return Calibration.from_probe(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        return None


def run_probe(spec: dict, bar=None) -> tuple[int, str, str]:
    """Run `probe.py` on `spec`: its exit code, its answer (stdout) and the last lines of
    its stderr. Its progress lines move `bar` (a tqdm: the total, then one step at a time)
    as they come, and are not kept with the rest of stderr."""
    child = subprocess.Popen([sys.executable, "-m", "lmtune.plan.probe"], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    answer = []  # read beside stderr, so neither pipe fills while the other is read
    reader = threading.Thread(target=lambda: answer.append(child.stdout.read()))
    reader.start()
    try:
        child.stdin.write(json.dumps(spec))
        child.stdin.close()
    except BrokenPipeError:  # it died before reading: its stderr says why
        pass
    tail = collections.deque(maxlen=8)
    for line in child.stderr:
        if line.startswith(PROGRESS):
            _advance(bar, line[len(PROGRESS):])
        elif line.strip():
            tail.append(line.rstrip())
    reader.join()
    return child.wait(), answer[0], "\n".join(tail)


def _advance(bar, what: str) -> None:
    if bar is None:
        return
    if what.startswith("total "):
        bar.total = int(what.split()[1])
        bar.refresh()
    else:
        bar.update(1)


def calibrate(cfg: Config, model_path: str, label_names: list[str] | None, params: int,
              max_width: int, bar=None) -> Calibration:
    """Measure (in a child process, a few training steps) and keep the result. `max_width`:
    the model's positions (the probe's shapes are the same for every run of this model, so
    one calibration serves them all); `bar`: a progress bar the probe's steps move."""
    path = calibration_path(cfg, model_path, len(label_names or []))
    spec = {"config": cfg.to_dict(), "model_path": model_path, "label_names": label_names,
            "points": probe_points(params, max_width)}
    code, answer, tail = run_probe(spec, bar)
    if code != 0:
        raise LmtuneError(f"plan: measuring method={cfg.method} failed:\n{tail}")
    out = json.loads(answer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, path)
    return Calibration.from_probe(out)

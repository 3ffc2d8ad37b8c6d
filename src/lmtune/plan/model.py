"""The planner's memory and time model: fitted to measurements, applied to a run's batches.

A step's cost is fitted as a non-negative combination of what grows with the batch:

    cost(b, w, t) = c + a * b*w + e * b*w^2 + v * t

for a micro-batch of b rows padded to w tokens of which t carry a language-model loss:
b*w tokens through every layer (activations, matmuls), b*w^2 attention scores (eager
attention keeps them; every attention computes them), and t positions projected onto the
vocabulary (logits, softmax and their gradients: a 49k vocabulary makes this the largest
term of an SFT step). `c` holds what a step costs whatever its shape: the gradients of the
trainable weights, the optimizer's update. The fit runs on a handful of small measured
shapes (`probe.py`); the prediction walks the run's own batches.

Peak memory of a training process:

    peak = rest (process with model and optimizer state, measured)
         + the tokenized data + the copy of the best trainable weights
         + the largest step's memory (fitted)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmtune.data.collate import padded

FEATURES = ("fixed", "tokens", "square", "trained")


@dataclass(frozen=True)
class Fit:
    """Non-negative coefficients of `FEATURES`."""

    coef: tuple[float, float, float, float]

    def __call__(self, rows: int, width: int, trained: int) -> float:
        x = (1.0, rows * width, rows * width * width, trained)
        return float(sum(c * v for c, v in zip(self.coef, x)))


def features(rows: int, width: int, trained: int) -> list[float]:
    return [1.0, float(rows * width), float(rows * width * width), float(trained)]


def fit(points: list[dict], key: str) -> Fit:
    """Least squares of `key` over the points, each coefficient kept >= 0 (a feature whose
    best weight is negative is noise at these sizes: it is dropped and the rest refitted),
    weighted by 1/value so the small shapes count as much as the large ones."""
    x = np.array([features(p["rows"], p["width"], p["trained"]) for p in points])
    y = np.array([p[key] for p in points], dtype=float)
    w = 1.0 / np.maximum(np.abs(y), 1e-9)
    keep = [i for i in range(x.shape[1]) if np.any(x[:, i] != x[0, i]) or i == 0]
    while True:
        sol, *_ = np.linalg.lstsq(x[:, keep] * w[:, None], y * w, rcond=None)
        bad = [k for k, s in zip(keep, sol) if s < 0]
        if not bad:
            break
        keep = [k for k in keep if k != bad[0]]
    coef = [0.0] * x.shape[1]
    for k, s in zip(keep, sol):
        coef[k] = float(s)
    return Fit(tuple(coef))


@dataclass(frozen=True)
class Calibration:
    """What `probe.py` measured for one model, method and precision on this machine,
    fitted."""

    rest_mb: float  # the process at rest: imports, tokenizer, model, optimizer state
    load_seconds: float
    step_mb: Fit
    backward: Fit  # seconds of one micro-batch's forward + backward
    forward: Fit  # seconds of an evaluation forward pass
    update_seconds: float  # the optimizer's update, once per step

    @classmethod
    def from_probe(cls, out: dict) -> Calibration:
        pts = out["points"]
        return cls(out["rest_mb"], out["load_seconds"], fit(pts, "step_mb"),
                   fit(pts, "backward_seconds"), fit(pts, "forward_seconds"),
                   float(np.median([p["update_seconds"] for p in pts])))


@dataclass(frozen=True)
class Batch:
    rows: int
    width: int
    trained: int


def train_batches(task, data, batch_size: int, seed: int, group_by_length: bool
                  ) -> list[Batch]:
    """The micro-batches of the first epoch, as `lmtune train` cuts and pads them."""
    from lmtune.data.collate import epoch_batches

    lengths = data.lengths()
    return [Batch(len(b), padded(max(lengths[i] for i in b)), task.trained_tokens(data, b))
            for b in epoch_batches(lengths, batch_size, seed, 0, group_by_length)]


def eval_shapes(task, data, batch_size: int) -> list[Batch]:
    """The batches of an evaluation pass (length-sorted, as `eval.batched` cuts them)."""
    from lmtune.data.collate import eval_batches

    lengths = data.lengths()
    return [Batch(len(b), padded(max(lengths[i] for i in b)), task.trained_tokens(data, b))
            for b in eval_batches(lengths, batch_size)]


def encoded_mb(data: dict) -> float:
    """Resident size of tokenized splits, from a sample of 200 rows per field: numpy rows
    count their buffer, Python lists their slots and the int objects past the 256 that
    Python shares (bools are shared too)."""
    import sys

    def row_bytes(r) -> int:
        if not isinstance(r, list):
            return sys.getsizeof(r)
        return sys.getsizeof(r) + sum(sys.getsizeof(x) for x in r
                                      if type(x) is int and not -5 <= x <= 256)

    total = 0
    for enc in data.values():
        for name in enc.ROWS:
            rows = getattr(enc, name, None)
            if not rows:
                continue
            sample = rows[: min(len(rows), 200)]
            total += 56 + 8 * len(rows) + sum(map(row_bytes, sample)) / len(sample) * len(rows)
    return total / 2**20

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

    peak = the process once its data is read and tokenized (its RSS then, measured)
         + the model and the optimizer's state (measured)
         + the copy of the best trainable weights
         + the largest of: a step's memory (fitted, times what mixing shapes adds, measured)
           and a checkpoint's copies (planner.py)
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
    """Least squares of `key` over the points, weighted by 1/value so the small shapes count
    as much as the large ones, every coefficient kept >= 0. The fixed and per-token terms
    are always fitted; the square and vocabulary terms only where they vary and earn their
    place (the smallest Bayesian information criterion): five points cannot carry four free
    terms, and a spurious one ruins the extrapolation to a run's larger batches."""
    import itertools

    x = np.array([features(p["rows"], p["width"], p["trained"]) for p in points])
    y = np.array([p[key] for p in points], dtype=float)
    w = 1.0 / np.maximum(np.abs(y), 1e-9)
    optional = [i for i in (2, 3) if np.ptp(x[:, i]) > 0]
    best = None
    for k in range(len(optional) + 1):
        for extra in itertools.combinations(optional, k):
            coef, rss = _nonnegative(x, y, w, [0, 1, *extra])
            score = len(y) * np.log(max(rss, 1e-300) / len(y)) \
                + (2 + len(extra)) * np.log(len(y))
            if best is None or score < best[0]:
                best = (score, coef)
    return Fit(best[1])


def _nonnegative(x, y, w, keep: list[int]) -> tuple[tuple[float, ...], float]:
    """Weighted least squares on the columns `keep`; a column whose weight comes out
    negative is dropped and the rest refitted. (coefficients, weighted residual sum)."""
    keep = list(keep)
    while True:
        sol, *_ = np.linalg.lstsq(x[:, keep] * w[:, None], y * w, rcond=None)
        bad = [k for k, s in zip(keep, sol) if s < 0]
        if not bad:
            break
        keep.remove(bad[0])
    coef = [0.0] * x.shape[1]
    for k, s in zip(keep, sol):
        coef[k] = float(s)
    rss = float(np.sum(((x @ np.array(coef) - y) * w) ** 2))
    return tuple(coef), rss


@dataclass(frozen=True)
class Calibration:
    """What `probe.py` measured for one model, method and precision on this machine,
    fitted."""

    # What the model adds to the process (with what loading it leaves in the heap, which a
    # run keeps too), and the optimizer's state.
    model_mb: float
    load_seconds: float
    step_mb: Fit
    backward: Fit  # seconds of one micro-batch's forward + backward
    forward: Fit  # seconds of an evaluation forward pass
    update_seconds: float  # the optimizer's update, once per step
    # A run's steps change shape; the heap keeps some of what one freed where the next
    # cannot reuse it. The peak of mixed shapes over the largest single step, measured.
    mixing: float = 1.0
    optimizer_mb: float = 0.0  # of model_mb: what the first update added (AdamW's moments)
    # The rest of a run's time: its process until the weights load (imports, the memory
    # guard), one checkpoint, and the final model dir.
    start_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    save_seconds: float = 0.0
    # What a run's second and third steps, and the two steps after a validation pass, take
    # beyond warm steps of the same shape: a short run's mean step holds them.
    early_seconds: float = 0.0
    after_validation_seconds: float = 0.0
    # The share by which the first step of a batch shape the process has not run yet is
    # slower than a warm one (oneDNN builds and caches kernels per shape): once for each
    # shape of a run.
    new_shape_share: float = 0.0

    @classmethod
    def from_probe(cls, out: dict) -> Calibration:
        pts = out["points"]
        return cls(out["loaded_mb"] - out["before_model_mb"] + out["optimizer_mb"],
                   out["load_seconds"],
                   fit(pts, "step_mb"),
                   fit(pts, "backward_seconds"), fit(pts, "forward_seconds"),
                   float(np.median([p["update_seconds"] for p in pts])),
                   max(1.0, out["mixed_step_mb"] / max(p["step_mb"] for p in pts)),
                   out["optimizer_mb"], out["start_seconds"], out["checkpoint_seconds"],
                   out["save_seconds"], *cold_seconds(out), new_shape_share(pts))


def cold_seconds(out: dict) -> tuple[float, float]:
    """The extra seconds of a run's second and third steps, and of the two after a
    validation: each pair beyond twice the mean warm step of the same shape (the three
    steps just before the validation)."""
    warm = 2 * float(np.mean(out["before_validation_steps"]))
    return (max(0.0, sum(out["early_steps"]) - warm),
            max(0.0, sum(out["after_validation_steps"]) - warm))


def new_shape_share(points: list[dict]) -> float:
    """The mean share by which a shape's first step is slower than its warm ones, over the
    probe's shapes but the first (the probe's first update ran that one already), and but
    those whose rows and width an earlier shape had (the same matmuls)."""
    seen, shares = set(), []
    for i, p in enumerate(points):
        key = (p["rows"], p["width"])
        if i and key not in seen:
            warm = p["backward_seconds"] + p["update_seconds"]
            shares.append(max(0.0, p["first_seconds"] / warm - 1))
        seen.add(key)
    return float(np.mean(shares)) if shares else 0.0


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

"""Load a finished run (or any HF classifier dir) and predict labels for texts.

    clf = lmtune.pipeline("runs/default")
    clf("a gripping, beautifully shot film")   # {"label": "fresh", "score": 0.97}
    clf(["dull", "superb"])                     # a list in, a list out (batched)
"""
from __future__ import annotations

from pathlib import Path

import torch

from lmtune import runtime
from lmtune.config import Config
from lmtune.data.collate import Encoded, encode
from lmtune.errors import LmtuneError
from lmtune.eval.batched import evaluate_classifier, predict_proba
from lmtune.rundir import open_run


class Predictor:
    """A saved classifier with its tokenizer, label map and inference settings."""

    def __init__(self, path: str | Path, batch_size: int | None = None,
                 precision: str = "auto"):
        path = Path(path)
        if not path.is_dir():
            raise LmtuneError(f"{path}: not a run dir or model dir")
        run = open_run(path)
        self.config: Config | None = run.config
        if not run.task.labels:
            raise LmtuneError(f"{path}: a task={run.task.name} model predicts no labels; use "
                              f"`lmtune generate {path}` (or `lmtune eval`)")
        self.model, self.tokenizer = run.load()
        id2label = self.model.config.id2label
        self.label_names = [id2label[i] for i in range(len(id2label))]
        self.max_length = self.config.train.max_length if self.config else 512
        self.batch_size = batch_size or (self.config.eval.batch_size if self.config else 64)
        self.precision = runtime.resolve_precision(precision)
        self.pad_id = self.tokenizer.pad_token_id or 0

    def autocast(self):
        return runtime.autocast(self.precision)

    def encode(self, texts: list[str], labels: list[str] | None = None) -> Encoded:
        label2id = {name: i for i, name in enumerate(self.label_names)}
        ids = [label2id[x] for x in labels] if labels is not None else None
        return encode(self.tokenizer, texts, self.max_length, ids)

    def predict(self, texts: list[str]) -> list[dict]:
        """[{"label", "score", "scores": {label: prob}}] in input order."""
        if not texts:
            return []
        probs = predict_proba(self.model, self.encode(texts), self.batch_size, self.pad_id,
                              self.autocast)
        return self._labelled(probs)

    def _labelled(self, probs: torch.Tensor) -> list[dict]:
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": self.label_names[best], "score": row[best],
                        "scores": dict(zip(self.label_names, row))})
        return out

    def evaluate(self, texts: list[str], labels: list[str], progress: bool = False,
                 predictions: bool = False) -> dict:
        """Test metrics; with `predictions`, also `predict`'s rows (key "predictions"),
        from the same forward pass."""
        probs = torch.empty(len(texts), len(self.label_names)) if predictions else None
        metrics = evaluate_classifier(self.model, self.encode(texts, labels),
                                      self.label_names, self.batch_size, self.pad_id,
                                      self.autocast, progress, probs)
        if probs is not None:
            metrics["predictions"] = self._labelled(probs)
        return metrics

    def __call__(self, texts: str | list[str]) -> dict | list[dict]:
        if isinstance(texts, str):
            return self.predict([texts])[0]
        return self.predict(list(texts))

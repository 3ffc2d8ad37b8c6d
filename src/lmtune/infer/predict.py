"""Load a finished run (or any HF classifier dir) and predict labels for texts.

    clf = lmtune.pipeline("runs/default")
    clf("a gripping, beautifully shot film")   # {"label": "fresh", "score": 0.97}
    clf(["dull", "superb"])                     # a list in, a list out (batched)

A multi-label model (`problem_type=multi_label_classification` in its config) gives every
label whose score passes its threshold: {"labels": ["approach"], "scores": {...}}.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lmtune import runtime
from lmtune.config import Config
from lmtune.data.collate import Encoded, encode
from lmtune.errors import LmtuneError
from lmtune.eval.batched import evaluate_classifier, predict_proba
from lmtune.eval.multilabel import PROBLEM_TYPE, evaluate_multilabel
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
        config = self.model.config
        self.label_names = [config.id2label[i] for i in range(len(config.id2label))]
        self.multi_label = getattr(config, "problem_type", None) == PROBLEM_TYPE
        chosen = getattr(config, "lmtune_thresholds", None) or {}
        self.thresholds = [chosen.get(name, 0.5) for name in self.label_names]
        self.max_length = self.config.train.max_length if self.config else 512
        self.batch_size = batch_size or (self.config.eval.batch_size if self.config else 64)
        self.precision = runtime.resolve_precision(precision)
        self.pad_id = self.tokenizer.pad_token_id or 0

    def autocast(self):
        return runtime.autocast(self.precision)

    def encode(self, texts: list[str], labels: list | None = None) -> Encoded:
        """Tokens, with each label as its id (multi-label: a tuple of names as a 0/1 per
        label)."""
        label2id = {name: i for i, name in enumerate(self.label_names)}
        ids = None
        if labels is not None and self.multi_label:
            ids = [[int(c in row) for c in self.label_names] for row in labels]
        elif labels is not None:
            ids = [label2id[x] for x in labels]
        return encode(self.tokenizer, texts, self.max_length, ids)

    def predict(self, texts: list[str]) -> list[dict]:
        """[{"label", "score", "scores": {label: prob}}] in input order (multi-label:
        [{"labels": [names over their thresholds], "scores": {label: prob}}])."""
        if not texts:
            return []
        probs = predict_proba(self.model, self.encode(texts), self.batch_size, self.pad_id,
                              self.autocast, self.multi_label)
        return self._labelled(probs)

    def _labelled(self, probs: torch.Tensor) -> list[dict]:
        out = []
        for row in probs.tolist():
            if self.multi_label:
                out.append({"labels": [c for c, p, t in zip(self.label_names, row,
                                                            self.thresholds) if p > t],
                            "scores": dict(zip(self.label_names, row))})
                continue
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": self.label_names[best], "score": row[best],
                        "scores": dict(zip(self.label_names, row))})
        return out

    def evaluate(self, texts: list[str], labels: list[str], progress: bool = False,
                 predictions: bool = False) -> dict:
        """Test metrics; with `predictions`, also `predict`'s rows (key "predictions"),
        from the same forward pass."""
        probs = torch.empty(len(texts), len(self.label_names)) if predictions else None
        metrics = self.evaluate_model(self.model, texts, labels, progress, probs)
        if probs is not None:
            metrics["predictions"] = self._labelled(probs)
        return metrics

    def evaluate_model(self, model, texts: list[str], labels: list, progress: bool = False,
                       probs: torch.Tensor | None = None) -> dict:
        """`model`'s test metrics on `texts` as this predictor scores them (its labels,
        thresholds, batches and precision): the run's own model, or its base."""
        data = self.encode(texts, labels)
        if self.multi_label:
            return evaluate_multilabel(model, data, self.label_names, self.thresholds,
                                       self.batch_size, self.pad_id, self.autocast, progress,
                                       probs)
        return evaluate_classifier(model, data, self.label_names, self.batch_size,
                                   self.pad_id, self.autocast, progress, probs)

    def __call__(self, texts: str | list[str]) -> dict | list[dict]:
        if isinstance(texts, str):
            return self.predict([texts])[0]
        return self.predict(list(texts))

"""Load a finished run (or any HF classifier dir) and predict labels for texts.

    clf = lmtune.pipeline("runs/default")
    clf("a gripping, beautifully shot film")   # {"label": "fresh", "score": 0.97}
    clf(["dull", "superb"])                     # a list in, a list out (batched)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lmtune import dist
from lmtune.config import Config, load_config
from lmtune.data.collate import Encoded, encode
from lmtune.errors import LmtuneError
from lmtune.eval.run import evaluate, predict_proba
from lmtune.models.io import load_saved
from lmtune.models.load import attention_impl, resolve_model


@dataclass
class Run:
    """What loading needs from a run dir, or from a bare model (HF dir, hub id, alias)."""

    config: Config | None
    model_dir: Path
    base: str
    trust: bool


def open_run(path: str | Path, cache_dir: str = "") -> Run:
    p = Path(path)
    if (p / "config.yaml").exists():
        config = load_config(p / "config.yaml")
        return Run(config, p / "model", config.model, config.trust_remote_code)
    if p.is_dir():  # a bare HF model dir (full fine-tune) has no base to resolve
        return Run(None, p, str(p), False)
    resolved = Path(resolve_model(str(path), cache_dir))
    if not resolved.is_dir():
        raise LmtuneError(f"{path}: not a run dir, a model dir or an alias")
    return Run(None, resolved, str(resolved), False)


class Predictor:
    """A saved classifier with its tokenizer, label map and inference settings."""

    def __init__(self, path: str | Path, batch_size: int | None = None,
                 precision: str = "auto"):
        path = Path(path)
        if not path.is_dir():
            raise LmtuneError(f"{path}: not a run dir or model dir")
        run = open_run(path)
        self.config: Config | None = run.config
        task = run.config.task if run.config else model_task(run.model_dir)
        if task != "classify":
            raise LmtuneError(f"{path}: a task={task} model predicts no labels; use "
                              f"`lmtune generate {path}` (or `lmtune eval`)")
        attention = attention_impl(self.config.attention if self.config else "auto",
                                   dist.device_type())
        self.model, self.tokenizer = load_saved(run.model_dir, run.base, run.trust, attention)
        id2label = self.model.config.id2label
        self.label_names = [id2label[i] for i in range(len(id2label))]
        self.max_length = self.config.train.max_length if self.config else 512
        self.batch_size = batch_size or (self.config.eval.batch_size if self.config else 64)
        self.precision = dist.resolve_precision(precision)
        self.pad_id = self.tokenizer.pad_token_id or 0

    def autocast(self):
        return dist.autocast(self.precision)

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
        metrics = evaluate(self.model, self.encode(texts, labels), self.label_names,
                           self.batch_size, self.pad_id, self.autocast, progress, probs)
        if probs is not None:
            metrics["predictions"] = self._labelled(probs)
        return metrics

    def __call__(self, texts: str | list[str]) -> dict | list[dict]:
        if isinstance(texts, str):
            return self.predict([texts])[0]
        return self.predict(list(texts))


def pipeline(path: str | Path, **kwargs):
    """The seed's `pipeline(...)` for a saved run: call it on a text or a list of texts.

    A classification run gives label + score; an sft/seq2seq/clm run (or a causal LM or
    encoder-decoder dir) gives generated text.
    """
    run = open_run(path)
    task = run.config.task if run.config else model_task(run.model_dir)
    if task in ("sft", "clm", "seq2seq"):
        from lmtune.infer.generate import Generator

        return Generator(path, **kwargs)
    if task == "mlm":
        raise LmtuneError(f"{path}: a masked LM has no pipeline; fine-tune it for a task "
                          "(task=classify with model= its model dir)")
    return Predictor(path, **kwargs)


def model_task(model_dir: Path) -> str:
    """The task a bare HF model dir was made for, from its architecture name."""
    import json

    config = json.loads((model_dir / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    if config.get("is_encoder_decoder") or arch.endswith(
            ("ForConditionalGeneration", "MTModel", "EncoderDecoderModel")):
        return "seq2seq"
    if arch.endswith("ForCausalLM"):
        return "sft"
    return "mlm" if arch.endswith("ForMaskedLM") else "classify"


def evaluate_run(path: str | Path, overrides: list[str] = (), progress: bool = False,
                 predictions: bool = False) -> tuple[Predictor, dict]:
    """Metrics of a saved run on its test split, or on `data.test=FILE` given as override.

    Returns (predictor, metrics) where metrics also holds `texts`, `labels`, with
    `predictions` each row's prediction, and, while the training data can be read,
    `majority_baseline` (accuracy of always answering the training set's top class).
    """
    from lmtune.data.load import check_known_labels, labeled, load_splits, read_source
    from lmtune.eval.metrics import majority_baseline

    clf = Predictor(path)
    if clf.config is None:
        raise LmtuneError(f"{path}: not a run dir (no config.yaml); `lmtune eval` needs the "
                          "run's data settings")
    cfg = load_config(Path(path) / "config.yaml", overrides)
    if any(o.startswith("data.test=") for o in overrides):  # new data, with its own columns
        table = read_source(cfg.data.test, cfg.seed)
        table = table["test"] if isinstance(table, dict) else table
        test = labeled(table, cfg.data)
        check_known_labels(test, table, cfg.data, clf.label_names)
    else:
        test = load_splits(cfg.data, cfg.seed).test
        if test is None:
            raise LmtuneError(f"{path}: the run has no test split; give data.test=FILE")
    metrics = clf.evaluate(test.texts, test.labels, progress, predictions)
    train_labels = _training_labels(Path(path))
    if train_labels is not None:
        metrics["majority_baseline"] = majority_baseline(train_labels, test.labels)
    metrics["source"] = test.source
    return clf, metrics | {"texts": test.texts, "labels": test.labels}


def _training_labels(run_dir: Path) -> list[str] | None:
    """The run's training labels, read with the run's own data settings (not the overrides
    that describe the new test file); None when that data is no longer there."""
    from lmtune.data.load import load_splits

    saved = load_config(run_dir / "config.yaml")
    try:
        return load_splits(saved.data, saved.seed).train.labels
    except LmtuneError as e:
        print(f"note: no majority baseline; the training data cannot be read ({e})",
              file=sys.stderr)
        return None


def evaluate_base(clf: Predictor, texts: list[str], labels: list[str],
                  progress: bool = False) -> dict:
    """The run's base model, with a new classification head drawn as training drew it, on
    the same texts: what fine-tuning started from."""
    import torch

    from lmtune.models.load import load_classifier

    cfg = clf.config
    if cfg is None:
        raise LmtuneError("--compare-base needs a run dir (its config names the base model)")
    torch.manual_seed(cfg.seed)
    model = load_classifier(resolve_model(cfg.model, cfg.cache_dir), clf.label_names,
                            cfg.trust_remote_code,
                            attention_impl(cfg.attention, dist.device_type()))
    return evaluate(model.eval(), clf.encode(texts, labels), clf.label_names, clf.batch_size,
                    clf.pad_id, clf.autocast, progress)

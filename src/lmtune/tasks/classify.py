"""task=classify: a text → one of k labels (sentiment, topic, ...).

    rows (text, label) → Splits (seeded, stratified where split here) → token ids + class id
    loss: cross-entropy of the class logits, summed over samples
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from lmtune.config import Config, ConfigError, parse_label_values
from lmtune.data.collate import Encoded, collate, encode
from lmtune.data.load import Splits, load_splits
from lmtune.tasks.base import EvalSettings, Task


class Classify(Task):
    name = "classify"
    model_class = "AutoModelForSequenceClassification"
    peft_type = "SEQ_CLS"
    labels = True
    exports_onnx = True
    eager_on_cpu = True
    default_metric = "accuracy"
    metrics = ("accuracy", "macro_f1", "loss")
    headline = ("loss", "accuracy", "macro_f1")
    architectures = ("ForSequenceClassification",)
    head_modules = ("classifier", "score")  # BERT-style and decoder-style heads, as in peft

    def for_run(self, cfg: Config) -> Task:
        """data.multi_label: the multi-label task (tasks/multilabel.py)."""
        if cfg.data.multi_label:
            from lmtune.tasks.multilabel import MultiLabel

            return MultiLabel.bound(cfg)
        return self

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        if cfg.data.format not in ("auto", "text"):
            raise ConfigError("data.format", "task=classify reads a text and a label column")

    def check_rows(self, raw: Splits) -> dict:
        from lmtune.data.checks import Rows

        parts = {"train": raw.train, "validation": raw.validation, "test": raw.test}
        return {name: Rows(p.texts, p.where or [f"{p.source} (row {i + 1})"
                                                for i in range(len(p))], p.labels)
                for name, p in parts.items() if p is not None}

    def metric_for(self, cfg: Config, raw: Splits) -> str:
        """auto: macro-F1 when the training classes are imbalanced (accuracy would reward
        predicting the largest class), else accuracy."""
        if cfg.eval.metric != "auto":
            return cfg.eval.metric
        return "macro_f1" if imbalanced(raw.train.labels) else "accuracy"

    def warnings(self, test: dict, data: dict[str, Encoded]) -> list[str]:
        """A collapse onto one class, or no better than the majority baseline."""
        from lmtune.eval.metrics import classifier_warnings, majority_baseline

        return classifier_warnings(test, majority_baseline(data["train"].labels,
                                                           data["test"].labels))

    def class_weights(self, cfg: Config, raw: Splits) -> list[float] | None:
        """Each class's weight in the training loss (None: all 1), in label-id order.

        auto, when imbalanced: n / (k × n_c) for class c of n_c of the n rows, so each class
        carries the same total weight and the weights average 1 over the rows (the loss
        keeps its scale)."""
        setting, names = cfg.train.class_weights, raw.label_names
        if setting == "none" or (setting == "auto" and not imbalanced(raw.train.labels)):
            return None
        if setting == "auto":
            counts = Counter(raw.train.labels)
            return [len(raw.train.labels) / (len(names) * max(counts[c], 1)) for c in names]
        return per_label("train.class_weights",
                         parse_label_values("train.class_weights", setting), names, 1.0)

    def read(self, cfg: Config, train_table=None, test_only: bool = False) -> Splits:
        return load_splits(cfg.data, cfg.seed, train_table)

    def label_names(self, raw: Splits) -> list[str]:
        return raw.label_names

    def model_kwargs(self, raw: Splits) -> dict:
        """The label map goes into the model config, so a saved model keeps its classes;
        the head is new (its size differs from any pretrained head)."""
        id2label = dict(enumerate(raw.label_names))
        return dict(num_labels=len(id2label), id2label=id2label,
                    label2id={name: i for i, name in id2label.items()},
                    ignore_mismatched_sizes=True)

    def encode(self, cfg: Config, tokenizer, raw: Splits, model_config
               ) -> tuple[dict[str, Encoded], None]:
        label2id = raw.label2id
        data = {name: encode(tokenizer, part.texts, cfg.train.max_length,
                             [label2id[x] for x in part.labels])
                for name, part in (("train", raw.train), ("validation", raw.validation),
                                   ("test", raw.test)) if part is not None}
        data["train"].class_weights = self.class_weights(cfg, raw)
        return data, None

    def collate(self, data: Encoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(data, idx, pad_id)

    def synthetic_rows(self, rows: int, width: int, trained: int, vocab: int,
                       n_labels: int) -> Encoded:
        g = torch.Generator().manual_seed(0)
        return Encoded(input_ids=torch.randint(1, vocab, (rows, width), generator=g).tolist(),
                       labels=torch.randint(0, n_labels, (rows,), generator=g).tolist())

    def loss_sum(self, model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
        with autocast():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
        if "weights" not in batch:
            return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
        losses = F.cross_entropy(logits.float(), batch["labels"], reduction="none")
        return (losses * batch["weights"]).sum()

    def evaluate(self, model, data: Encoded, how: EvalSettings) -> dict:
        from lmtune.eval.batched import evaluate_classifier

        return evaluate_classifier(model, data, how.label_names, how.batch_size, how.pad_id,
                                   how.autocast, how.progress, ranks=how.ranks, stop=how.stop)


def per_label(key: str, given: dict[str, float], names: list[str], default: float
              ) -> list[float]:
    """`given` ({label: value}) as one value per label of `names`, `default` for the rest;
    a name that is not a label is an error."""
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(key, f"names {', '.join(map(repr, unknown))}, not a label of the "
                          f"data ({', '.join(names)})")
    return [given.get(c, default) for c in names]


IMBALANCED = 1.5  # the largest class has this many times the rows of the smallest, or more


def imbalanced(labels: list[str]) -> bool:
    counts = Counter(labels).values()
    return max(counts) >= IMBALANCED * min(counts)

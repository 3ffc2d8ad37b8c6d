"""task=classify with data.multi_label: a text → any number of k labels (topics, tags,
the aspects a sentence states).

    rows (text, [labels]) → Splits → token ids + a 0/1 per label
    loss: binary cross-entropy per label (a sigmoid each), averaged over the labels, summed
          over rows
    predict: every label whose score passes its threshold (eval.thresholds: one number, per
          label, or tuned on the validation split after training)

The thresholds travel in the saved model's config (`lmtune_thresholds`, with HF's
`problem_type=multi_label_classification`), so `lmtune predict` and `lmtune eval` use the
ones the run chose, from a run dir or an exported model.
"""
from __future__ import annotations

import torch

from lmtune.config import Config, parse_thresholds
from lmtune.data.collate import Encoded, encode
from lmtune.data.load import Splits
from lmtune.eval.multilabel import PROBLEM_TYPE
from lmtune.tasks.base import EvalSettings
from lmtune.tasks.classify import Classify, imbalanced, per_label


class MultiLabel(Classify):
    default_metric = "micro_f1"
    metrics = ("micro_f1", "macro_f1", "subset_accuracy", "loss")
    headline = ("loss", "micro_f1", "macro_f1", "subset_accuracy")
    setting = "0.5"  # eval.thresholds
    thresholds: list[float] | None = None  # one per label, once the labels are known

    @classmethod
    def bound(cls, cfg: Config) -> MultiLabel:
        task = cls()
        task.setting = cfg.eval.thresholds
        return task

    def check_rows(self, raw: Splits) -> dict:
        """Label sets as one name each ("approach,outcome"; "(none)"), for the balance and
        conflict checks."""
        rows = super().check_rows(raw)
        for r in rows.values():
            r.labels = [",".join(x) or "(none)" for x in r.labels]
        return rows

    def metric_for(self, cfg: Config, raw: Splits) -> str:
        """auto: macro-F1 when the labels' frequencies are imbalanced (micro-F1 would be
        carried by the frequent ones), else micro-F1."""
        if cfg.eval.metric != "auto":
            return cfg.eval.metric
        names = [name for row in raw.train.labels for name in row]
        return "macro_f1" if imbalanced(names) else "micro_f1"

    def warnings(self, test: dict, data: dict[str, Encoded]) -> list[str]:
        from lmtune.eval.multilabel import multilabel_warnings

        return multilabel_warnings(test)

    def class_weights(self, cfg: Config, raw: Splits) -> list[float] | None:
        """Each label's weight on its positive rows (BCE's pos_weight) when given per label,
        else None: auto weighs nothing here. For a rare label, per-label thresholds
        (eval.thresholds=tune) are the setting that needs no weight chosen by hand."""
        if cfg.train.class_weights in ("auto", "none"):
            return None
        return super().class_weights(cfg, raw)

    def model_kwargs(self, raw: Splits) -> dict:
        """The label map and the problem type; thresholds named per label must name labels
        of the data (checked here, before anything is loaded)."""
        self.fixed_thresholds(raw.label_names)
        return super().model_kwargs(raw) | {"problem_type": PROBLEM_TYPE}

    def fixed_thresholds(self, names: list[str]) -> list[float]:
        """eval.thresholds per label (tune starts from 0.5)."""
        fixed = parse_thresholds("0.5" if self.setting == "tune" else self.setting)
        if not isinstance(fixed, dict):
            return [fixed] * len(names)
        return per_label("eval.thresholds", fixed, names, 0.5)

    def encode(self, cfg: Config, tokenizer, raw: Splits, model_config
               ) -> tuple[dict[str, Encoded], None]:
        """Tokens, and per row a 0/1 per label [C] in label-id order."""
        names = raw.label_names
        data = {}
        for name, part in (("train", raw.train), ("validation", raw.validation),
                           ("test", raw.test)):
            if part is not None:
                hot = [[int(c in row) for c in names] for row in part.labels]
                data[name] = encode(tokenizer, part.texts, cfg.train.max_length, hot)
        data["train"].class_weights = self.class_weights(cfg, raw)
        return data, None

    def synthetic_rows(self, rows: int, width: int, trained: int, vocab: int,
                       n_labels: int) -> Encoded:
        rows_ = super().synthetic_rows(rows, width, trained, vocab, n_labels)
        rows_.labels = [[int(j == i % n_labels) for j in range(n_labels)] for i in range(rows)]
        return rows_

    def loss_sum(self, model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
        from lmtune.eval.multilabel import bce_sum

        with autocast():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
        return bce_sum(logits, batch["labels"], batch.get("weights"))

    def evaluate(self, model, data: Encoded, how: EvalSettings) -> dict:
        from lmtune.eval.multilabel import evaluate_multilabel

        if self.thresholds is None:
            self.thresholds = self.fixed_thresholds(how.label_names)
        return evaluate_multilabel(model, data, how.label_names, self.thresholds,
                                   how.batch_size, how.pad_id, how.autocast, how.progress,
                                   ranks=how.ranks, stop=how.stop)

    def after_training(self, model, data: dict[str, Encoded], how: EvalSettings) -> None:
        """With eval.thresholds=tune, each label's F1-best threshold on the validation
        split, from the best weights. Either way the thresholds go into the model config,
        which is saved with the model."""
        from lmtune.eval.multilabel import evaluate_multilabel

        self.thresholds = self.thresholds or self.fixed_thresholds(how.label_names)
        if self.setting == "tune":
            self.thresholds = evaluate_multilabel(
                model, data["validation"], how.label_names, self.thresholds, how.batch_size,
                how.pad_id, how.autocast, ranks=how.ranks, tune=True)["best_thresholds"]
        config = getattr(model, "module", model).config
        config.lmtune_thresholds = dict(zip(how.label_names, self.thresholds))


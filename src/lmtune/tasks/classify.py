"""task=classify: a text → one of k labels (sentiment, topic, ...).

    rows (text, label) → Splits (seeded, stratified where split here) → token ids + class id
    loss: cross-entropy of the class logits, summed over samples
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmtune.config import Config, ConfigError
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

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        if cfg.data.format not in ("auto", "text"):
            raise ConfigError("data.format", "task=classify reads a text and a label column")

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
        return data, None

    def collate(self, data: Encoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        return collate(data, idx, pad_id)

    def loss_sum(self, model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
        with autocast():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")

    def evaluate(self, model, data: Encoded, how: EvalSettings) -> dict:
        from lmtune.eval.batched import evaluate_classifier

        return evaluate_classifier(model, data, how.label_names, how.batch_size, how.pad_id,
                                   how.autocast, how.progress, ranks=how.ranks)

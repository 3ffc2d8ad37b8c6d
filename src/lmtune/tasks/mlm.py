"""task=mlm: continued pretraining of an encoder on plain text (masked language modelling).

    texts → [CLS] tokens [SEP] pieces of `train.max_length` → masked anew each epoch (seeded):
    of the `data.mlm_probability` chosen tokens 80% become [MASK], 10% a random token, 10%
    stay; only the chosen tokens carry the loss. Validation and test are masked once, so their
    losses compare across steps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmtune.config import Config
from lmtune.data import templates
from lmtune.data.collate import Encoded, collate_lm
from lmtune.data.lm import Report, encode_lm, mlm_view
from lmtune.errors import LmtuneError
from lmtune.tasks.base import Task


class Mlm(Task):
    name = "mlm"
    model_class = "AutoModelForMaskedLM"
    eager_on_cpu = True
    exports_onnx = True
    architectures = ("ForMaskedLM",)

    def encode_split(self, cfg: Config, tokenizer, items: list, where: list[str],
                     model_config, train: bool) -> tuple[Encoded, Report]:
        if tokenizer.mask_token_id is None:
            raise LmtuneError(f"model {cfg.model}: its tokenizer has no mask token; task=mlm "
                              "needs an encoder such as minilm")
        enc, report = encode_lm(items, where, cfg, train, lambda text: templates.tokenize_text(
            tokenizer, text, cfg.train.max_length, add_eos=False), causal=False)
        report.note = (f"mlm: {cfg.data.mlm_probability:.0%} of the non-special tokens are "
                       "masked anew each epoch and carry the loss")
        if not train:  # a fixed masking, so validation losses compare across steps
            enc = mlm_view(enc, tokenizer, cfg.data.mlm_probability, cfg.seed)
        return enc, report

    def train_view(self, data: Encoded, cfg: Config, tokenizer, epoch: int) -> Encoded:
        """MLM masks anew each epoch (seeded, so resumable)."""
        return mlm_view(data, tokenizer, cfg.data.mlm_probability,
                        cfg.seed * 1_000_003 + epoch + 1)

    def collate(self, data: Encoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_lm(data, idx, pad_id)

    def loss_sum(self, model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
        with autocast():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
        keep = batch["targets"] != -100
        return F.cross_entropy(logits[keep].float(), batch["targets"][keep], reduction="sum")

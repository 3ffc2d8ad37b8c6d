"""task=seq2seq: encoder-decoder models (summarization, translation) on (source, target)
pairs; see data/seq2seq.py for how a conversation becomes encoder and decoder tokens.

    loss: teacher-forced cross-entropy on the target tokens, summed over them
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmtune.config import GENERATION_METRICS, Config
from lmtune.data.collate import Encoded, collate_seq2seq
from lmtune.data.lm import LMSplits, Report, batch_padding
from lmtune.data.seq2seq import encode_seq2seq
from lmtune.errors import LmtuneError
from lmtune.tasks.base import Task


class Seq2seq(Task):
    name = "seq2seq"
    model_class = "AutoModelForSeq2SeqLM"
    peft_type = "SEQ_2_SEQ_LM"
    conversations = True
    generates = True
    decodes = True
    eager_on_cpu = True
    metrics = ("loss", *GENERATION_METRICS)
    headline = ("loss", "perplexity", *GENERATION_METRICS)
    architectures = ("ForConditionalGeneration", "MTModel", "EncoderDecoderModel")

    def encode_split(self, cfg: Config, tokenizer, items: list, where: list[str],
                     model_config, train: bool) -> tuple[Encoded, Report]:
        start = getattr(model_config, "decoder_start_token_id", None)
        if start is None:
            raise LmtuneError(f"model {cfg.model}: its config sets no decoder_start_token_id, "
                              "which an encoder-decoder needs to start decoding")
        report = Report()
        return encode_seq2seq(tokenizer, items, where, cfg.train.max_length, start,
                              report), report

    def finish_train(self, cfg: Config, enc: Encoded, report: Report
                     ) -> tuple[Encoded, Report]:
        report.padding_unpacked = batch_padding(enc, cfg.train.batch_size)
        report.note = "seq2seq: every target token carries the loss; padding counts the " \
                      "encoder side"
        return enc, report

    def prompts(self, raw: LMSplits, cfg: Config) -> list | None:
        n = cfg.eval.generate_samples
        return raw.items["validation"][:n] if n else None

    def decode_kind(self, tokenizer) -> str:
        return "seq2seq"

    def collate(self, data: Encoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_seq2seq(data, idx, pad_id)

    def synthetic_rows(self, rows: int, width: int, trained: int, vocab: int,
                       n_labels: int) -> Encoded:
        """`width` tokens in all: `trained` of them decoder targets, the rest the source."""
        g = torch.Generator().manual_seed(0)
        src = torch.randint(1, vocab, (rows, max(1, width - trained)), generator=g).tolist()
        tgt = torch.randint(1, vocab, (rows, max(1, trained)), generator=g).tolist()
        return Encoded(input_ids=src, decoder_ids=tgt, targets=tgt,
                       units=[len(t) for t in tgt])

    def trained_tokens(self, data: Encoded, idx: list[int]) -> int:
        return sum(len(data.targets[i]) for i in idx)

    def loss_sum(self, model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
        with autocast():  # teacher forcing: the decoder reads the shifted targets
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"],
                           decoder_input_ids=batch["decoder_input_ids"],
                           use_cache=False).logits  # [B, T, V]
        keep = batch["targets"] != -100
        return F.cross_entropy(logits[keep].float(), batch["targets"][keep], reduction="sum")

"""task=sft and task=clm: decoder-only language models, trained on the next token.

    sft  conversations (chat, sharegpt, alpaca, prompt/completion) → the tokenizer's own chat
         template → tokens, with the loss on the assistant turns (`data.train_on`)
    clm  plain texts (continued pretraining) → tokens + EOS, every token trained

Both may pack samples into `train.max_length` rows (`data.packing`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmtune.config import GENERATION_METRICS, Config
from lmtune.data import templates
from lmtune.data.collate import Encoded, collate_lm
from lmtune.data.lm import LMSplits, Report, encode_lm, pack
from lmtune.models.prompts import prepended_positions
from lmtune.tasks.base import Task


class CausalLM(Task):
    """What sft and clm share: reading, packing, the next-token loss."""

    packs = True
    decodes = True
    exports_onnx = True

    def tokenize(self, tokenizer, cfg: Config):
        """item → its tokenized rows."""
        return lambda text: templates.tokenize_text(tokenizer, text, cfg.train.max_length,
                                                    add_eos=True)

    def encode_split(self, cfg: Config, tokenizer, items: list, where: list[str],
                     model_config, train: bool) -> tuple[Encoded, Report]:
        return encode_lm(items, where, cfg, train, self.tokenize(tokenizer, cfg))

    def finish_train(self, cfg: Config, enc: Encoded, report: Report
                     ) -> tuple[Encoded, Report]:
        if cfg.data.packing:
            enc = pack(enc, cfg.train.max_length, cfg.train.batch_size, report)
        return enc, report

    def decode_kind(self, tokenizer) -> str:
        return "text"

    def collate(self, data: Encoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        return collate_lm(data, idx, pad_id)

    def loss_sum(self, model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
        """Next-token loss computed only where a target exists.

        Position t predicts token t+1. `logits_to_keep` (a [B, T] bool mask) makes the model
        project only those hidden states onto the vocabulary: with SmolLM2's 49k-token
        vocabulary, the full [B, T, V] logits would dwarf the rest of the step's memory,
        while an SFT batch trains only the assistant tokens. Prompt-learning adapters
        prepend V positions of their own, which are never kept.
        """
        targets = batch["targets"]
        nxt = targets[:, 1:]
        keep = torch.zeros_like(targets, dtype=torch.bool)
        keep[:, :-1] = nxt != -100
        keep = F.pad(keep, (prepended_positions(model), 0))  # [B, V + T]
        with autocast():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch.get("attention_mask"),
                           position_ids=batch.get("position_ids"),
                           logits_to_keep=keep, use_cache=False).logits  # [N kept, V]
        return F.cross_entropy(logits.float(), nxt[nxt != -100], reduction="sum")


class Sft(CausalLM):
    name = "sft"
    peft_type = "CAUSAL_LM"
    conversations = True
    max_length = 1024  # an ordinary chat with its answer; a classifier's 128 cuts most
    generates = True
    metrics = ("loss", *GENERATION_METRICS)
    headline = ("loss", "perplexity", *GENERATION_METRICS)
    architectures = ("ForCausalLM",)

    def tokenize(self, tokenizer, cfg: Config):
        return lambda conv: [templates.tokenize_conversation(
            tokenizer, conv, cfg.data.train_on, cfg.train.max_length, cfg.data.truncation)]

    def encode(self, cfg: Config, tokenizer, raw: LMSplits, model_config
               ) -> tuple[dict[str, Encoded], Report]:
        templates.check_template(tokenizer, cfg.model)
        return super().encode(cfg, tokenizer, raw, model_config)

    def prompts(self, raw: LMSplits, cfg: Config) -> list | None:
        n = cfg.eval.generate_samples
        return raw.items["validation"][:n] if n else None

    def decode_kind(self, tokenizer) -> str:
        return "chat" if getattr(tokenizer, "chat_template", None) else "text"


class Clm(CausalLM):
    name = "clm"
    peft_type = "CAUSAL_LM"

"""What every task declares. A task is one small object; everything outside `tasks/` asks it
instead of comparing task names.

    read      config (+ in-memory table) → raw splits, validated with file:line errors
    model     the transformers Auto class, the peft task type, attention on CPU
    encode    raw splits → tokens + loss masks (`Encoded` per split) and a data report
    collate   rows of `Encoded` → a padded batch of tensors
    loss_sum  the batch's loss as a sum over its units (samples, trained tokens)
    evaluate  metrics of one split; `headline` says which are worth a log row
    generate  how prompts are built for decoding (`decode_kind`), which validation rows are
              generated from (`prompts`)
    check     the config checks that only this task knows
    for_run   the task bound to the run's settings (DPO's beta and loss; multi-label)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from lmtune.config import GENERATION_METRICS, Config, ConfigError
from lmtune.data.collate import Encoded


@dataclass
class EvalSettings:
    """How one evaluation pass runs: batches, padding, precision, and the ranks that share
    it (None: one process)."""

    batch_size: int
    pad_id: int
    autocast: Callable = contextlib.nullcontext
    ranks: tuple[int, int] | None = None
    progress: bool = False
    label_names: list[str] | None = None  # tasks that predict labels
    stop: Callable[[], bool] | None = None  # asked between batches: True ends the pass


class Task:
    name = ""
    model_class = "AutoModelForCausalLM"  # the transformers Auto class it trains
    peft_type: str | None = None  # peft's TaskType name, for adapters
    conversations = False  # reads chat-style or source/target rows (else plain text)
    decodes = False  # its models generate text (`lmtune generate`, pipeline)
    generates = False  # validation and `lmtune eval` score generated text
    labels = False  # predicts class labels
    exports_onnx = False  # its forward takes the input ids alone (`lmtune export --format onnx`)
    eager_on_cpu = False  # attention=auto: eager on CPU (faster for encoders), else sdpa
    default_metric = "loss"  # the validation metric that picks the best model
    metrics: tuple[str, ...] = ("loss",)  # what eval.metric may name
    headline: tuple[str, ...] = ("loss", "perplexity")  # metrics worth a log row
    architectures: tuple[str, ...] = ()  # architecture-name endings of models made for it
    packs = False  # can pack several samples into one row (data.packing)
    head_modules: tuple[str, ...] = ()  # modules a new task head adds (they always train)
    max_length = 128  # train.max_length unless set
    no_dropout = False  # dropout off in the model trained (train.dropout unset)

    def for_run(self, cfg: Config) -> Task:
        """The task bound to a run's own settings (a loss's coefficients), for everything
        that has no config at hand (`loss_sum`, `evaluate`). Most tasks have none."""
        return self

    def check(self, cfg: Config) -> None:
        """Config checks only this task knows; raise ConfigError(key, message)."""
        if cfg.eval.metric not in ("auto", *self.metrics):
            hint = "scores generated text (task=sft or seq2seq)" \
                if cfg.eval.metric in GENERATION_METRICS else "does not suit this task"
            raise ConfigError("eval.metric", f"{cfg.eval.metric} {hint}; task={self.name} "
                              f"selects by {', '.join(self.metrics)}")
        if cfg.eval.metric in GENERATION_METRICS and not cfg.eval.generate_samples:
            raise ConfigError("eval.metric", f"{cfg.eval.metric} needs generation during "
                              "training: set eval.generate_samples > 0")
        if cfg.data.packing and not self.packs:
            raise ConfigError("data.packing", f"task={self.name} does not pack")
        if cfg.data.multi_label and not self.labels:
            raise ConfigError("data.multi_label", f"task={self.name} predicts no labels")
        if cfg.train.class_weights not in ("auto", "none") and not self.labels:
            raise ConfigError("train.class_weights", f"weighs classes; task={self.name} "
                              "predicts none")

    def warnings(self, test: dict, data: dict[str, Encoded]) -> list[str]:
        """What the user must hear about a trained model's test metrics (none by default)."""
        return []

    def metric_for(self, cfg: Config, raw) -> str:
        """The validation metric that picks the best model: `eval.metric`, or for `auto`
        the task's choice for this data."""
        return cfg.eval.metric if cfg.eval.metric != "auto" else self.default_metric

    # --------------------------------------------------------------------- data

    def read(self, cfg: Config, train_table=None, test_only: bool = False):
        """The raw splits the config names (`test_only`: only the test split): by default
        conversations or texts per split, each with its file:line (`data.lm.LMSplits`)."""
        from lmtune.data.lm import load_lm_splits

        return load_lm_splits(cfg, self.conversations, train_table, test_only)

    def check_rows(self, raw) -> dict:
        """The raw splits as `data.checks` reads them ({split: Rows}): by default each item
        (a text, a conversation, a preference pair) joined into one text, with its
        file:line."""
        from lmtune.data.checks import Rows, item_text

        return {name: Rows([item_text(x) for x in items], raw.where[name])
                for name, items in raw.items.items()}

    def label_names(self, raw) -> list[str] | None:
        return None

    def model_kwargs(self, raw) -> dict:
        """Extra `from_pretrained` arguments the data decides (a classifier's labels)."""
        return {}

    def encode(self, cfg: Config, tokenizer, raw, model_config) -> tuple[dict[str, Encoded],
                                                                         object | None]:
        """Tokenize every split once: ({split: Encoded}, a data report (`data.lm.Report`:
        what the loss will see) or None). By default each split goes through
        `encode_split`, and the training split then through `finish_train`."""
        data, report = {}, None
        for name, items in raw.items.items():
            enc, rep = self.encode_split(cfg, tokenizer, items, raw.where[name], model_config,
                                         train=name == "train")
            if name == "train":
                enc, report = self.finish_train(cfg, enc, rep)
            data[name] = enc
        return data, report

    def finish_train(self, cfg: Config, enc: Encoded, report) -> tuple[Encoded, object]:
        """The training split once tokenized (packing, say), with its report."""
        return enc, report

    def encode_split(self, cfg: Config, tokenizer, items: list, where: list[str],
                     model_config, train: bool) -> tuple[Encoded, object]:
        """Tokenize one split's items (`where`: their file:line), as `encode` does; a
        training split must teach in every row. Returns (Encoded, its data report)."""
        raise NotImplementedError

    def train_view(self, data: Encoded, cfg: Config, tokenizer, epoch: int) -> Encoded:
        """The training rows of `epoch` (a task may vary them per epoch, seeded)."""
        return data

    def prompts(self, raw, cfg: Config) -> list | None:
        """Validation conversations to generate from during training (None: none)."""
        return None

    def decode_kind(self, tokenizer) -> str | None:
        """How prompts are built for decoding: chat, text or seq2seq (None: no decoding)."""
        return None

    def before_training(self, cfg: Config, model, data: dict[str, Encoded],
                        how: EvalSettings) -> None:
        """Work on the encoded splits that needs the starting model, done once before the
        first step (DPO: the reference log-probabilities). Nothing by default."""

    def after_training(self, model, data: dict[str, Encoded], how: EvalSettings) -> None:
        """Settings fitted with the best weights before the test pass and the save (all
        ranks call it; multi-label: thresholds tuned on the validation split). Nothing by
        default."""

    def before_eval(self, model, data: Encoded, reference: Callable | None,
                    how: EvalSettings) -> None:
        """The same for `lmtune eval`: `reference()` loads the model the run started from;
        None when that model itself is evaluated. Nothing by default."""

    def synthetic_rows(self, rows: int, width: int, trained: int, vocab: int,
                       n_labels: int) -> Encoded:
        """`rows` random rows of `width` tokens, the last `trained` of each carrying the
        loss, shaped as this task's encoding shapes them: what the planner's measurements
        (`lmtune plan`) run through the model. By default language-model rows."""
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(1, vocab, (rows, width), generator=g).tolist()
        mask = [[j >= width - trained for j in range(width)]] * rows
        return Encoded(input_ids=ids, trained=mask, units=[trained] * rows)

    def trained_tokens(self, data: Encoded, idx: list[int]) -> int:
        """Tokens of rows `idx` that carry the loss (the language-model head projects only
        those onto the vocabulary); 0 where the loss reads a label."""
        if data.trained is None:
            return 0
        return sum(sum(data.trained[i]) for i in idx)

    # ---------------------------------------------------------------- the loss

    def collate(self, data: Encoded, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch(self, data: Encoded, idx: list[int], pad_id: int, device
              ) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.collate(data, idx, pad_id).items()}

    def loss_sum(self, model, batch: dict[str, torch.Tensor], autocast) -> torch.Tensor:
        """The summed loss of `batch` (fp32), over its units.

        Sums, not means: the loop divides by the units of the whole effective batch (all
        micro-batches, all ranks), so accumulation and data parallelism give the gradient of
        one big batch."""
        raise NotImplementedError

    def loss_and_stats(self, model, batch: dict[str, torch.Tensor], autocast
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`loss_sum`, and figures worth a training log row as sums over the batch's rows
        (the loop logs their mean per row): none by default."""
        return self.loss_sum(model, batch, autocast), {}

    def evaluate(self, model, data: Encoded, how: EvalSettings) -> dict:
        """Metrics of one encoded split: token loss and perplexity unless overridden."""
        from lmtune.eval.batched import evaluate_loss

        return evaluate_loss(model, data, self.batch, self.loss_sum, how)

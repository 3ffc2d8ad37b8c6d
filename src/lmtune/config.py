"""Typed, nested run configuration: YAML file + dotted command-line overrides.

    lmtune train configs/lora.yaml train.lr=1e-4 lora.r=16

Every section is a dataclass validated in `__post_init__`; unknown keys are rejected with
the valid ones listed and a "did you mean". Errors name the file and line of the bad key.
Field help strings (`metadata["help"]`) become `lmtune train --help`.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmtune import typed_yaml
from lmtune.errors import ConfigError, LmtuneError
from lmtune.typed_yaml import (build, choice, opt, parse_label_values, parse_scalar,
                                parse_thresholds, positive, read_yaml, set_dotted)

FORMATS = ("auto", "chat", "sharegpt", "alpaca", "prompt_completion", "source_target",
           "text", "preference", "openai_preference")
TRAIN_ON = ("assistant", "last_assistant", "all")
SCHEDULES = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
GENERATION_METRICS = ("rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match")
METRICS = ("auto", "accuracy", "macro_f1", "micro_f1", "subset_accuracy", "loss",
           "rewards/accuracies", *GENERATION_METRICS)
ATTENTION = ("auto", "eager", "sdpa")
QUANTIZE = ("none", "int8", "nf4")
LORA_INITS = ("default", "gaussian", "pissa", "olora")
TRUNCATION = ("prompt_middle", "end")
DPO_LOSSES = ("sigmoid", "ipo", "simpo")
DISTRIBUTED = ("ddp", "fsdp", "deepspeed")
ZERO_STAGES = (1, 2, 3)


@dataclass
class DataConfig:
    train: str = opt("rotten_tomatoes", "training data: CSV/TSV/JSONL/Parquet file, saved HF "
                     "datasets dir, or built-in name (rotten_tomatoes, "
                     "rotten_tomatoes_pairs, aclsum, aclsum_highlights, bible_en_es)")
    validation: str | None = opt(None, "validation data; split from train when unset")
    test: str | None = opt(None, "test data; split from train when only train is given")
    text_column: str = opt("text", "column holding the input text")
    label_column: str = opt("label", "column holding the class label")
    source_column: str = opt("source", "source_target rows: column holding the input")
    target_column: str = opt("target", "source_target rows: column holding the output")
    val_fraction: float = opt(0.1, "share of train split off for validation when needed")
    val_max_rows: int = opt(2000, "at most this many rows split off for validation (the rest "
                            "stay in train), so that validating a large set costs a small "
                            "share of an epoch; 0: no cap")
    test_fraction: float = opt(0.1, "share of train split off for test when needed")
    format: str = opt("auto", f"sft/seq2seq/clm/mlm/dpo row format: {', '.join(FORMATS)} "
                      "(auto: from the columns)")
    train_on: str = opt("assistant", f"sft: which tokens carry the loss: "
                        f"{', '.join(TRAIN_ON)}")
    packing: bool = opt(False, "sft/clm: pack samples into train.max_length rows (each "
                        "sample attends only to itself)")
    drop_unlearnable: bool = opt(False, "sft: drop samples left with no trained token "
                                 "(after truncation) instead of stopping with an error")
    truncation: str = opt("prompt_middle", "sft: how a conversation longer than "
                          "train.max_length is cut: prompt_middle (drop the middle of the "
                          "prompt before the first trained turn, so the answer stays) or end")
    multi_label: bool = opt(False, "classify: each row has any number of labels (a JSON "
                            "list, or names joined by data.label_separator); sigmoid per label")
    label_separator: str = opt(",", "multi_label: what joins label names in a CSV/TSV cell")
    max_samples: int = opt(0, "use only the first N rows of each split (0: all)")
    cache: bool = opt(True, "keep the tokenized splits under cache_dir, keyed by the rows, "
                      "the tokenizer and these settings: the next run on the same data "
                      "skips tokenizing")
    mlm_probability: float = opt(0.15, "mlm: share of tokens masked")

    def __post_init__(self) -> None:
        choice("truncation", self.truncation, TRUNCATION)
        for key in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, key) < 0.5:
                raise ConfigError(key, f"must be in (0, 0.5); got {getattr(self, key)}")
        positive("val_max_rows", self.val_max_rows, allow_zero=True)
        choice("format", self.format, FORMATS)
        choice("train_on", self.train_on, TRAIN_ON)
        positive("max_samples", self.max_samples, allow_zero=True)
        if not self.label_separator.strip():
            raise ConfigError("label_separator", "must not be empty or blank")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError("mlm_probability", f"must be in (0, 1); got "
                              f"{self.mlm_probability}")


@dataclass
class TrainConfig:
    epochs: float = opt(1.75, "passes over the training data (fractions allowed)")
    max_steps: int = opt(0, "stop after this many optimizer steps (0: use epochs)")
    min_steps: int = opt(100, "train at least this many optimizer steps: a small training "
                         "set gets more epochs than train.epochs says (0: off; max_steps "
                         "wins)")
    batch_size: int = opt(32, "samples per micro-batch and process (global batch: "
                          "batch_size x grad_accum x processes)")
    grad_accum: int = opt(1, "micro-batches per optimizer step")
    lr: float | None = opt(None, "peak learning rate (unset: the method's own default, "
                           "listed in the README's methods table)")
    weight_decay: float = opt(0.01, "AdamW weight decay (not applied to biases and norms)")
    warmup: float = opt(0.06, "warmup: a share of all steps if < 1, else a step count")
    schedule: str = opt("linear", f"LR decay after warmup: {', '.join(SCHEDULES)}")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0: off)")
    class_weights: str = opt("auto", "classify: each class's weight in the loss: auto "
                             "(inverse class frequency when the largest class has 1.5x the "
                             "rows of the smallest or more, else equal), none, or "
                             "'label=weight,...' (unnamed labels weigh 1)")
    max_length: int = opt(0, "truncate inputs to this many tokens (0: the task's own length: "
                          "1024 for sft, capped at the model's positions; 128 otherwise)")
    group_by_length: bool = opt(True, "batch samples of similar length (less padding)")
    precision: str = opt("auto", "auto (bf16 autocast where the hardware runs bf16 "
                         "natively, else fp32), bf16, fp32; never fp16")
    eval_every: int = opt(0, "evaluate every N optimizer steps (0: at each epoch end)")
    log_every: int = opt(10, "write a metrics.jsonl row every N optimizer steps")
    threads: int = opt(0, "CPU threads for torch (0: one per physical core)")
    dropout: float | None = opt(0.0, "set every dropout probability of the model (0: off; "
                                "null: the model's own). Off by default: drawing the masks "
                                "is a large share of a small model's CPU step, and the "
                                "default job scored higher without them")
    gradient_checkpointing: bool = opt(False, "recompute each layer's activations in the "
                                       "backward: less memory, slower steps")
    memory_guard: bool = opt(True, "before loading the model, stop with the cheapest change "
                             "that fits when the predicted peak memory is more than the "
                             "memory available (see `lmtune plan`)")
    checkpoint_every: int = opt(0, "also checkpoint every N optimizer steps (0: only at "
                                "epoch ends and on SIGTERM/SIGINT)")
    keep_checkpoints: int = opt(1, "keep the newest N checkpoints (plus the best one)")
    distributed: str = opt("ddp", "with several processes: ddp (each holds the whole model), "
                           "fsdp (parameters, gradients and optimizer state sharded over "
                           "them; torch FSDP2) or deepspeed (ZeRO, see zero_stage; needs "
                           "lmtune[deepspeed]); one process ignores it")
    zero_stage: int = opt(2, "distributed=deepspeed: ZeRO stage 1 (optimizer state "
                          "partitioned), 2 (and gradients) or 3 (and parameters)")

    def __post_init__(self) -> None:
        positive("epochs", self.epochs)
        for key in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            positive(key, getattr(self, key))
        for key in ("max_steps", "min_steps", "eval_every", "threads", "warmup", "weight_decay",
                    "max_grad_norm", "checkpoint_every", "max_length"):
            positive(key, getattr(self, key), allow_zero=True)
        if self.lr is not None:
            positive("lr", self.lr)
        if self.class_weights not in ("auto", "none"):
            parse_label_values("class_weights", self.class_weights)
        choice("schedule", self.schedule, SCHEDULES)
        choice("precision", self.precision, PRECISIONS)
        choice("distributed", self.distributed, DISTRIBUTED)
        choice("zero_stage", self.zero_stage, ZERO_STAGES)
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"must be in [0, 1); got {self.dropout}")


@dataclass
class LoraConfig:
    r: int = opt(16, "adapter rank (LoRA, DoRA, LoHa, LoKr, VeRA); OFT/BOFT: block size")
    alpha: int = opt(32, "LoRA scaling numerator (scale = alpha / r; LoHa/LoKr alike)")
    dropout: float = opt(0.1, "dropout on the adapter input")
    target_modules: list[str] = opt([], "module names to adapt; empty: a per-architecture "
                                    "default (BERT: query, key, value, dense; IA3: peft's)")
    rslora: bool = opt(False, "rank-stabilized LoRA: scale = alpha / sqrt(r)")
    plus_ratio: float = opt(0.0, "LoRA+ (lora, dora): the B matrices' learning rate is "
                            "train.lr times this (0: off; 16 is the paper's choice)")
    init: str = opt("default", "how LoRA's matrices start (lora, qlora): default (B = 0), "
                    "gaussian, pissa (the weight's top singular directions), olora (its QR "
                    "factors); pissa and olora adapters are saved as plain LoRA adapters")

    def __post_init__(self) -> None:
        positive("r", self.r)
        positive("alpha", self.alpha)
        positive("plus_ratio", self.plus_ratio, allow_zero=True)
        choice("init", self.init, LORA_INITS)
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"must be in [0, 1); got {self.dropout}")


@dataclass
class PromptConfig:
    virtual_tokens: int = opt(20, "prefix, prompt, ptuning: how many learned virtual tokens")
    init_text: str = opt("", "prompt: start the virtual tokens from this text's token "
                         "embeddings, repeated to length (empty: random)")
    encoder_hidden: int = opt(128, "ptuning: hidden width of the MLP that makes the tokens")

    def __post_init__(self) -> None:
        positive("virtual_tokens", self.virtual_tokens)
        positive("encoder_hidden", self.encoder_hidden)


@dataclass
class DpoConfig:
    beta: float = opt(0.1, "task=dpo: how far the model may move from the reference (higher: "
                      "closer); simpo works at about 2")
    loss: str = opt("sigmoid", "sigmoid (DPO), ipo (squared, per-token), or simpo (no "
                    "reference model; length-normalized, with a target margin)")
    precompute_ref: bool = opt(True, "compute the reference log-probabilities once before "
                               "training (no second model in memory); false: every step, "
                               "from the model with its adapter switched off")
    simpo_gamma: float = opt(0.5, "loss=simpo: the reward margin the chosen answer must win by")

    def __post_init__(self) -> None:
        positive("beta", self.beta)
        choice("loss", self.loss, DPO_LOSSES)
        positive("simpo_gamma", self.simpo_gamma, allow_zero=True)


@dataclass
class TrackConfig:
    tensorboard: bool = opt(False, "also write TensorBoard event files to RUN/tensorboard "
                            "(extra: tensorboard)")
    mlflow: bool = opt(False, "also log params, metrics and the model dir to MLflow "
                       "(extra: mlflow)")
    mlflow_uri: str = opt("", "MLflow tracking URI (empty: a SQLite store, RUN/mlflow.db)")
    experiment: str = opt("lmtune", "MLflow experiment name")

    def __post_init__(self) -> None:
        import importlib.util

        for key, package in (("tensorboard", "tensorboard"), ("mlflow", "mlflow")):
            if getattr(self, key) and importlib.util.find_spec(package) is None:
                raise ConfigError(key, f"needs the {package} package: pip install "
                                  f"'lmtune[{package}]'")


@dataclass
class FreezeConfig:
    layers: int = opt(2, "method=freeze: train the head plus this many top layers")

    def __post_init__(self) -> None:
        positive("layers", self.layers, allow_zero=True)


@dataclass
class EvalConfig:
    metric: str = opt("auto", f"validation metric that picks the best model: "
                      f"{', '.join(METRICS)} (auto: to classify, macro_f1 when the classes "
                      "are imbalanced, else accuracy (multi-label: micro_f1); else loss)")
    batch_size: int = opt(128, "samples per evaluation batch")
    max_samples: int = opt(0, "validation during training scores a seeded sample of N rows, "
                           "and `lmtune eval` computes generation metrics on the first N test "
                           "rows; the test pass itself stays whole (0: all)")
    generate_samples: int = opt(32, "sft/seq2seq: generation metrics (ROUGE, BLEU, chrF) "
                                "during training on the first N validation rows (0: off; "
                                "decoding costs far more than the loss)")
    thresholds: str = opt("0.5", "data.multi_label: the score over which a label is "
                          "predicted: one number, 'label=t,...' (unnamed: 0.5), or tune "
                          "(each label's best F1 on the validation split, after training)")

    def __post_init__(self) -> None:
        choice("metric", self.metric, METRICS)
        if self.thresholds != "tune":
            parse_thresholds(self.thresholds)
        positive("batch_size", self.batch_size)
        positive("max_samples", self.max_samples, allow_zero=True)
        positive("generate_samples", self.generate_samples, allow_zero=True)


@dataclass
class GenerateConfig:
    max_new_tokens: int = opt(128, "most tokens to generate per prompt")
    temperature: float = opt(0.0, "sampling temperature (0: greedy)")
    top_p: float = opt(1.0, "nucleus sampling: smallest token set with this probability")
    repetition_penalty: float = opt(1.0, "divide the scores of tokens already in the prompt "
                                    "or output by this (1: off; 1.1-1.3 curbs the loops "
                                    "greedy decoding falls into)")
    stop: list[str] = opt([], "stop strings (besides EOS / end of turn)")
    batch_size: int = opt(16, "prompts decoded together")

    def __post_init__(self) -> None:
        positive("max_new_tokens", self.max_new_tokens)
        positive("temperature", self.temperature, allow_zero=True)
        positive("batch_size", self.batch_size)
        if self.repetition_penalty < 1:
            raise ConfigError("repetition_penalty", f"must be >= 1; got "
                              f"{self.repetition_penalty}")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", f"must be in (0, 1]; got {self.top_p}")


@dataclass
class Config:
    task: str = opt("classify", "what to train: classify, sft, seq2seq, clm, mlm, dpo")
    model: str = opt("minilm", "local HF model dir, hub id, or alias (minilm, smollm2, "
                     "minilm2minilm)")
    method: str = opt("full", "fine-tuning method: full, freeze, bitfit, norms, lora, dora, "
                      "qlora, adalora, loha, lokr, vera, ia3, oft, boft, prompt, ptuning, "
                      "prefix")
    quantize: str = opt("none", "adapter methods: load the frozen base in 8 bits (int8) or "
                        "4-bit NF4 (nf4; bitsandbytes); qlora means lora with nf4")
    seed: int = opt(42, "seed for data order, splits and initialization")
    output_dir: str = opt("runs/default", "run dir: config, metrics, model, eval results")
    overwrite: bool = opt(False, "replace an existing run dir that holds a different config")
    resume: bool = opt(False, "continue from the newest valid checkpoint in output_dir")
    trust_remote_code: bool = opt(False, "allow model repos to run their own Python code")
    cache_dir: str = opt("", "where converted models are kept (empty: $XDG_CACHE_HOME/lmtune "
                         "or ~/.cache/lmtune)")
    attention: str = opt("auto", "attention implementation: auto (eager for encoders and "
                         "encoder-decoders on CPU, where sdpa's backward is slower; sdpa "
                         "otherwise), eager, sdpa")
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def __post_init__(self) -> None:
        # The registries import this module; they are read here, once they exist.
        from lmtune.methods import METHODS
        from lmtune.tasks import TASKS

        choice("task", self.task, tuple(TASKS))
        if not self.train.max_length:  # the task's own; capped at the model's positions
            self.train.max_length = TASKS[self.task].max_length
            self.train.length_from_task = True  # not a config key: see fit_positions
        TASKS[self.task].for_run(self).check(self)
        choice("method", self.method, tuple(METHODS))
        choice("quantize", self.quantize, QUANTIZE)
        if self.quantize != "none" and not METHODS[self.method].adapter:
            raise ConfigError("quantize", f"quantizes the frozen base under an adapter; "
                              f"method={self.method} trains the model's own weights")
        if METHODS[self.method].check:
            METHODS[self.method].check(self, TASKS[self.task])
        if self.train.lr is None:
            self.train.lr = METHODS[self.method].default_lr
        choice("attention", self.attention, ATTENTION)
        if not self.model:
            raise ConfigError("model", "must name a model dir, hub id or alias")
        if self.resume and self.overwrite:
            raise ConfigError("resume", "resume=true continues a run and overwrite=true "
                              "replaces it; set only one")

    @property
    def quantization(self) -> str:
        """How the frozen base is loaded: `quantize`, else the method's own (qlora: nf4)."""
        from lmtune.methods import METHODS

        return self.quantize if self.quantize != "none" else METHODS[self.method].quantize

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cache_root(cache_dir: str = "") -> Path:
    """`cache_dir`, else $XDG_CACHE_HOME/lmtune, else ~/.cache/lmtune (the XDG default)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "lmtune"


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = (),
                values: dict[str, Any] | None = None) -> Config:
    """Build a Config from an optional YAML file, a dict of values and `key=value` strings.

    Later sources win: file < `values` < `overrides`.
    """
    raw: dict[str, Any] = {}
    lines: dict[str, str] = {}
    if path is not None:
        raw, lines = read_yaml(Path(path))
    for key, value in (values or {}).items():
        set_dotted(raw, key, value)
        lines[key] = "argument"
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise LmtuneError(f"command line: override {item!r} must look like key=value")
        set_dotted(raw, key.strip(), parse_scalar(text))
        lines[key.strip()] = f"command line ({item})"
    return build(Config, raw, "", lines)


def config_yaml(cfg: Config) -> str:
    """YAML text of the fully resolved config (the run dir's config.yaml)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf key: the body of `lmtune train --help`."""
    return typed_yaml.describe(cls, prefix)

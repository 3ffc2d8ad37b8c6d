"""The one table of fine-tuning methods the tests run over.

Every registered method has a case here (a test fails otherwise), with the settings that
suit the tiny random models. Tests pick cases by what the method declares (`adapter`,
`mergeable`, `bf16_frozen`), never by hand-written name lists.
"""
from __future__ import annotations

from dataclasses import dataclass

from lmtune.methods import METHODS, Method


MODELS = ("bert-classify", "llama-sft", "t5-seq2seq")  # the tiny models of the contracts


@dataclass(frozen=True)
class MethodCase:
    name: str
    overrides: tuple[str, ...] = ()  # settings for the tiny models
    lr: float = 3e-3  # what moves a tiny random model in a few steps
    models: tuple[str, ...] = MODELS  # where it applies (elsewhere: a clear error, tested)
    # The loss ratio (end / start) a short run on a tiny *random* model must reach: methods
    # that train few numbers on a frozen random base move it least.
    learns: float = 0.98
    checkpointing: bool = True  # works with train.gradient_checkpointing
    reload_exact: bool = True  # save → load gives bitwise the same outputs

    @property
    def method(self) -> Method:
        return METHODS[self.name]

    def config(self) -> list[str]:
        return [f"method={self.name}", f"train.lr={self.lr}", *self.overrides]


ADAPTER = ("lora.r=8", "lora.dropout=0")
CASES = (
    MethodCase("full", learns=0.6),
    MethodCase("lora", ADAPTER, lr=1e-2),
    MethodCase("dora", ADAPTER, lr=1e-2),
    MethodCase("qlora", ADAPTER, lr=1e-2),
    MethodCase("loha", ADAPTER, lr=1e-2),
    MethodCase("lokr", ADAPTER, lr=1e-2),
    # saved with its pruned ranks cut out: smaller matmuls, other rounding
    MethodCase("adalora", ADAPTER, lr=1e-2, learns=0.99, reload_exact=False),
    MethodCase("vera", ADAPTER, lr=5e-2),  # few trained numbers: a higher LR moves them
    MethodCase("ia3", ("lora.dropout=0",), lr=1e-1, learns=0.995),
    MethodCase("oft", ADAPTER, lr=3e-2, learns=0.995),
    MethodCase("boft", ADAPTER, lr=3e-2),
    # a few input embeddings barely steer a random base: real models show the learning
    # (bench/methods.py)
    MethodCase("prompt", ("prompt.virtual_tokens=8",), lr=0.3, learns=0.999),
    MethodCase("ptuning", ("prompt.virtual_tokens=8",), lr=0.1, learns=0.999),
    MethodCase("prefix", ("prompt.virtual_tokens=8",), lr=3e-2, learns=0.995,
               checkpointing=False),  # a clear config error, tested
    MethodCase("freeze", ("freeze.layers=1",)),
    MethodCase("bitfit", lr=1e-2, models=("bert-classify",)),  # Llama has no biases
    MethodCase("norms", lr=5e-2, learns=0.995),
)


def names(model: str | None = None, **declared: bool) -> list[str]:
    """The cases that apply to `model` (any: None) and whose method declares every given
    flag, e.g. names("llama-sft", adapter=True)."""
    return [c.name for c in CASES if (model is None or model in c.models)
            and all(getattr(c.method, k) == v for k, v in declared.items())]


def case(name: str) -> MethodCase:
    return next(c for c in CASES if c.name == name)

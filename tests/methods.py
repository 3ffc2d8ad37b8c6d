"""The one table of fine-tuning methods the tests run over.

Every registered method has a case here (a test fails otherwise), with the settings that
suit the tiny random models. Tests pick cases by what the method declares (`adapter`,
`mergeable`, `bf16_frozen`), never by hand-written name lists.
"""
from __future__ import annotations

from dataclasses import dataclass

from lmtune.methods import METHODS, Method


@dataclass(frozen=True)
class MethodCase:
    name: str
    overrides: tuple[str, ...] = ()  # settings for the tiny models
    lr: float = 3e-3  # what moves a tiny random model in a few steps

    @property
    def method(self) -> Method:
        return METHODS[self.name]

    def config(self) -> list[str]:
        return [f"method={self.name}", f"train.lr={self.lr}", *self.overrides]


CASES = (
    MethodCase("full"),
    MethodCase("lora", ("lora.r=8", "lora.dropout=0"), lr=1e-2),
    MethodCase("freeze", ("freeze.layers=1",)),
)


def names(**declared: bool) -> list[str]:
    """The cases whose method declares every given flag, e.g. names(adapter=True)."""
    return [c.name for c in CASES
            if all(getattr(c.method, k) == v for k, v in declared.items())]


def case(name: str) -> MethodCase:
    return next(c for c in CASES if c.name == name)

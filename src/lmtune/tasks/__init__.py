"""Tasks: `task=` names one of these objects (see base.py for what each declares).

A new task is one module here plus its entry in `TASKS`.
"""
from __future__ import annotations

from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.tasks.base import EvalSettings, Task
from lmtune.tasks.causal import Clm, Sft
from lmtune.tasks.classify import Classify
from lmtune.tasks.dpo import Dpo
from lmtune.tasks.mlm import Mlm
from lmtune.tasks.seq2seq import Seq2seq

TASKS: dict[str, Task] = {t.name: t for t in (Classify(), Sft(), Seq2seq(), Clm(), Mlm(), Dpo())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise LmtuneError(f"task: must be one of {', '.join(TASKS)}; got {name!r}") from None


def task_of_model(model_dir: Path) -> Task:
    """The task a bare HF model dir was made for, from its architecture name (a causal LM
    is taken as a chat model: sft)."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    if config.get("is_encoder_decoder"):
        return TASKS["seq2seq"]
    found = [t for t in TASKS.values() if t.architectures and arch.endswith(t.architectures)]
    return found[0] if found else TASKS["classify"]


__all__ = ["EvalSettings", "TASKS", "Task", "get_task", "task_of_model"]

"""Generation from a saved run, an HF model dir, a hub id or an alias.

    gen = lmtune.pipeline("runs/sft")          # or Generator("runs/sft")
    gen("Summarize: ...")                       # "The paper ..."
    gen.generate([conversation, ...])           # the last assistant turn, if any, is dropped
    for piece in gen.stream(conversation): ...  # the answer as it is produced

The decoding itself (prompt rendering, batching, stop tokens, streaming) is
infer/decoder.py, shared with validation during training.
"""
from __future__ import annotations

from pathlib import Path

from lmtune import runtime
from lmtune.errors import LmtuneError
from lmtune.infer.decoder import Decoder
from lmtune.rundir import SavedRun, open_run


class Generator(Decoder):
    def __init__(self, path: str | Path, precision: str = "auto", cache_dir: str = ""):
        run = open_run(path, cache_dir)
        self.config = run.config
        task = run.task
        if not task.decodes:
            raise LmtuneError(f"{path}: a task={task.name} model does not generate text; use "
                              f"`lmtune predict` or `lmtune eval`")
        # an adapter is folded in: decoding runs at the speed of the base model
        model, tokenizer = run.load(cache_dir=cache_dir, merge=True)
        super().__init__(model, tokenizer, **decoder_settings(run, tokenizer, precision))


def decoder_settings(run: SavedRun, tokenizer, precision: str = "auto") -> dict:
    """`Decoder` arguments for a saved run's model: its task's prompt kind, its generate
    settings and its source length."""
    return dict(kind=run.task.decode_kind(tokenizer),
                settings=run.config.generate if run.config else None,
                precision=runtime.resolve_precision(precision),
                max_source_length=run.config.train.max_length if run.config else 512)

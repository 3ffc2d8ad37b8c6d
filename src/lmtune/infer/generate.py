"""Generation from a saved run, an HF model dir, a hub id or an alias.

    gen = lmtune.pipeline("runs/sft")          # or Generator("runs/sft")
    gen("Summarize: ...")                       # "The paper ..."
    gen.generate([conversation, ...])           # the last assistant turn, if any, is dropped

The decoding itself (prompt rendering, batching, stop tokens) is eval/generation.py, shared
with validation during training.
"""
from __future__ import annotations

from pathlib import Path

from lmtune import dist
from lmtune.eval.generation import Decoder, decode_kind
from lmtune.infer.predict import model_task, open_run
from lmtune.models.io import load_saved
from lmtune.models.load import attention_impl


class Generator(Decoder):
    def __init__(self, path: str | Path, precision: str = "auto", cache_dir: str = ""):
        run = open_run(path, cache_dir)
        self.config = run.config
        task = run.config.task if run.config else model_task(run.model_dir)
        task = task if task in ("clm", "seq2seq") else "sft"
        attention = attention_impl(run.config.attention if run.config else "auto",
                                   dist.device_type(), task)
        model, tokenizer = load_saved(run.model_dir, run.base, run.trust, attention,
                                      task=task, cache_dir=cache_dir)
        if hasattr(model, "merge_and_unload"):  # a LoRA adapter: fold it in, decode
            model = model.merge_and_unload()  # at the speed of the base model
        super().__init__(model, tokenizer, decode_kind(task, tokenizer),
                         run.config.generate if run.config else None,
                         dist.resolve_precision(precision),
                         run.config.train.max_length if run.config else 512)


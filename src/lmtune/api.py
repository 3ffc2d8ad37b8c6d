"""The Python API: fine-tune on in-memory lists, then predict.

    import lmtune
    clf = lmtune.fine_tune(texts, labels, output_dir="runs/mine", overrides=["train.epochs=2"])
    clf(["what a film!"])   # [{"label": "pos", "score": 0.98, "scores": {...}}]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lmtune.config import load_config
from lmtune.data.readers import from_lists
from lmtune.infer.predict import Predictor
from lmtune.train import RunResult, train


def fine_tune(texts: list[str], labels: list[Any], config: str | Path | None = None,
              overrides: list[str] | tuple = (), progress: bool = True,
              **values: Any) -> Predictor:
    """Fine-tune on `texts`/`labels` (split seeded and stratified into train/validation/
    test) and return a predictor for the saved run.

    `config` is an optional YAML file, `values` set top-level keys (`model="minilm"`,
    `method="lora"`, `output_dir=...`) and `overrides` are dotted `key=value` strings.
    The run's `RunResult` is on the predictor as `.result`.
    """
    cfg = load_config(config, overrides, values)
    table = from_lists({cfg.data.text_column: list(texts), cfg.data.label_column: list(labels)})
    result: RunResult = train(cfg, train_table=table, progress=progress)
    clf = Predictor(result.output_dir)
    clf.result = result
    return clf

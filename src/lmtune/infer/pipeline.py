"""`lmtune.pipeline(path)`: the saved run (or model dir) as a callable, whatever its task.

    clf = lmtune.pipeline("runs/default")   # a classifier: label + score
    clf("a gripping film")                   # {"label": "fresh", "score": 0.97, ...}
    gen = lmtune.pipeline("runs/sft")       # an sft/clm/seq2seq run: generated text
    gen("Summarize: ...")
"""
from __future__ import annotations

from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.rundir import open_run


def pipeline(path: str | Path, **kwargs):
    """A `Predictor` for a model that predicts labels, a `Generator` for one that generates
    text; `kwargs` go to its constructor."""
    task = open_run(path).task
    if task.decodes:
        from lmtune.infer.generate import Generator

        return Generator(path, **kwargs)
    if not task.labels:
        raise LmtuneError(f"{path}: a task={task.name} model has no pipeline; fine-tune it "
                          "for a task (e.g. task=classify with model= its model dir)")
    from lmtune.infer.predict import Predictor

    return Predictor(path, **kwargs)

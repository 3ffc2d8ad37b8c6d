"""lmtune: efficient fine-tuning of language models.

The curated API:
    fine_tune(texts, labels, ...)  train on in-memory lists, get a predictor back
    train(config)                  run a training job from a Config
    load_config(path, overrides)   build a validated Config
    pipeline(run_dir)              predict with a saved run: pipeline(dir)("text")
    evaluate_run(run_dir, ...)     test metrics of a saved run: ({"test": ...}, rows)
"""
from lmtune.api import fine_tune
from lmtune.config import Config, load_config
from lmtune.errors import LmtuneError
from lmtune.infer.evaluate import evaluate_run
from lmtune.infer.generate import Generator
from lmtune.infer.pipeline import pipeline
from lmtune.infer.predict import Predictor
from lmtune.train import RunResult, train

__version__ = "0.1.0"
__all__ = ["Config", "Generator", "LmtuneError", "Predictor", "RunResult", "evaluate_run",
           "fine_tune",
           "load_config", "pipeline", "train", "__version__"]

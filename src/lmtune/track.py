"""Metric loggers. The loop writes rows; reports read them later (training never imports
reporting)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol


class Logger(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    """`metrics.jsonl`: one JSON object per line, each written whole and flushed."""

    def __init__(self, path: Path):
        self._f = open(path, "a", encoding="utf-8")

    def log(self, row: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in row.items()}
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class NullLogger:
    """For processes that must not write (ranks other than 0)."""

    def log(self, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Tee:
    """Every row to each of several loggers (the run's metrics.jsonl and a caller's own)."""

    def __init__(self, *loggers: Logger):
        self.loggers = loggers

    def log(self, row: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(row)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def _scalars(row: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """(step, {tag: value}) of a metrics row: train rows as train/<name>, evaluation rows as
    <split>/<name>; markers (events, epochs) and non-numbers are left out."""
    split = row.get("split", "train")
    values = {f"{split}/{k}": float(v) for k, v in row.items()
              if k not in ("step", "epoch", "split") and isinstance(v, (int, float))
              and not isinstance(v, bool) and math.isfinite(v)}
    return int(row.get("step", 0)), values


class TensorBoardLogger:
    """The rows of metrics.jsonl as TensorBoard scalars, in RUN/tensorboard (torch's own
    SummaryWriter; `tensorboard --logdir RUN/tensorboard`)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from lmtune.errors import LmtuneError

            raise LmtuneError("track.tensorboard=true needs the tensorboard package: "
                              "pip install 'lmtune[tensorboard]'") from None
        self._w = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, row: dict[str, Any]) -> None:
        if "event" in row:
            return
        step, values = _scalars(row)
        for tag, value in values.items():
            self._w.add_scalar(tag, value, step)
        self._w.flush()

    def close(self) -> None:
        self._w.close()


class MlflowLogger:
    """Params (the flattened config), the rows of metrics.jsonl, and at the end the model
    dir, in one MLflow run: by default in a SQLite store in the run dir (RUN/mlflow.db,
    artifacts in RUN/mlartifacts; `mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db`),
    or at `track.mlflow_uri`. A resumed run continues the same MLflow run (its id is kept in
    RUN/mlflow_run_id)."""

    def __init__(self, run_dir: Path, config: dict, uri: str, experiment: str):
        try:
            import mlflow
        except ImportError:
            from lmtune.errors import LmtuneError

            raise LmtuneError("track.mlflow=true needs the mlflow package: "
                              "pip install 'lmtune[mlflow]'") from None
        import logging

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no table-creation chatter
        self._mlflow, self._run_dir = mlflow, run_dir
        mlflow.set_tracking_uri(uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
        found = mlflow.get_experiment_by_name(experiment)
        # A new experiment keeps its artifacts beside the run, not in the working dir.
        exp_id = found.experiment_id if found else mlflow.create_experiment(
            experiment, artifact_location=(run_dir / "mlartifacts").resolve().as_uri())
        id_file = run_dir / "mlflow_run_id"
        if id_file.exists():
            self._run = mlflow.start_run(run_id=id_file.read_text().strip())
        else:
            self._run = mlflow.start_run(experiment_id=exp_id, run_name=run_dir.name)
            id_file.write_text(self._run.info.run_id)
            mlflow.log_params(dict(_flatten(config)))

    def log(self, row: dict[str, Any]) -> None:
        if "event" in row:
            return
        step, values = _scalars(row)
        self._mlflow.log_metrics(values, step=step)

    def close(self) -> None:
        if (self._run_dir / "model").is_dir():
            self._mlflow.log_artifacts(str(self._run_dir / "model"), artifact_path="model")
        self._mlflow.end_run()


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def trackers(track, run_dir: Path, config: dict) -> list[Logger]:
    """The loggers `track.*` asks for, beside metrics.jsonl."""
    out: list[Logger] = []
    if track.tensorboard:
        out.append(TensorBoardLogger(run_dir))
    if track.mlflow:
        out.append(MlflowLogger(run_dir, config, track.mlflow_uri, track.experiment))
    return out

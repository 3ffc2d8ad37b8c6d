"""TensorBoard and MLflow get the rows of metrics.jsonl, read back with each library's own
reader."""
import json

import pytest

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.errors import LmtuneError


def jsonl_series(run, split, key):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows
            if key in r and r.get("split", "train") == split and "event" not in r]


def test_tensorboard_and_mlflow_hold_what_metrics_jsonl_holds(tiny_overrides, tmp_path):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["train", "--quiet", *tiny_overrides, "train.max_steps=6", "train.eval_every=3",
                 "track.tensorboard=true", "track.mlflow=true"]) == 0
    loss = jsonl_series(run, "train", "loss")
    accuracy = jsonl_series(run, "validation", "accuracy")
    assert len(loss) == 6 and len(accuracy) == 2

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("train/loss")] == loss
    assert [(e.step, e.value) for e in events.Scalars("validation/accuracy")] == \
        [(s, pytest.approx(v)) for s, v in accuracy]
    assert "test/accuracy" in events.Tags()["scalars"]

    client = mlflow.MlflowClient(f"sqlite:///{(run / 'mlflow.db').resolve()}")
    run_id = (run / "mlflow_run_id").read_text()
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    assert history == [(s, pytest.approx(v)) for s, v in loss]
    info = client.get_run(run_id)
    assert info.data.params["method"] == "full" and info.data.params["train.max_steps"] == "6"
    assert info.info.status == "FINISHED"
    assert "model/model.safetensors" in [a.path for a in client.list_artifacts(run_id, "model")]


def test_a_missing_tracking_package_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(LmtuneError, match=r"track.mlflow: needs the mlflow package"):
        load_config(None, ["track.mlflow=true"])

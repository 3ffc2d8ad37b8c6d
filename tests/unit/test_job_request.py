"""A fine-tuning job's request read into lmtune's settings."""
from pathlib import Path

from lmtune.serve.jobs import method_of, train_args


def test_a_jobs_method_hyperparameters_override_the_top_level_ones():
    req = {"hyperparameters": {"n_epochs": 3, "batch_size": 8},
           "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "beta": 0.2}}}}
    assert method_of(req) == ("dpo", {"n_epochs": 1, "batch_size": 8, "beta": 0.2})
    assert method_of({"method": None}) == ("supervised", {})


def test_a_jobs_command_line_takes_its_task_and_hyperparameters():
    req = {"training_file": "file-1", "seed": 7, "hyperparameters": {"n_epochs": 2},
           "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3,
                                                                 "batch_size": "auto"}}}}
    args = train_args({"request": req}, lambda _: {"path": "/data/pairs.jsonl"}, "smollm2",
                      Path("/jobs/runs/ftjob-1"), 25)
    assert "task=dpo" in args and "data.train=/data/pairs.jsonl" in args
    assert "train.epochs=2" in args and "dpo.beta=0.3" in args
    assert not any(a.startswith("train.batch_size") for a in args)  # "auto": lmtune's own

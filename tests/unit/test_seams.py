"""The seams hold: tasks and methods are objects looked up by name, and nothing outside
them compares task or method names."""
import json
import re
from pathlib import Path

import pytest

from lmtune.config import load_config
from lmtune.errors import LmtuneError
from lmtune.methods import METHODS
from lmtune.tasks import TASKS, Task, get_task, task_of_model

SRC = Path(__file__).parents[2] / "src" / "lmtune"


def test_every_task_module_registers_its_tasks():
    modules = {p.stem for p in (SRC / "tasks").glob("*.py")} - {"__init__", "base"}
    registered = {type(t).__module__.rsplit(".", 1)[1] for t in TASKS.values()}
    # a variant a registered task binds to for a run's settings
    multi = TASKS["classify"].for_run(load_config(None, ["data.multi_label=true"]))
    assert multi.name == "classify" and multi.labels
    assert registered | {type(multi).__module__.rsplit(".", 1)[1]} == modules
    assert all(isinstance(t, Task) and name == t.name for name, t in TASKS.items())
    with pytest.raises(LmtuneError, match="must be one of classify"):
        get_task("kto")


def test_no_task_or_method_names_are_compared_outside_the_seams():
    compare = re.compile(r"""(task|method)(\.name)?\s*(==|!=|\bin\b)\s*[("']""")
    found = [f"{p.relative_to(SRC)}:{i}: {line.strip()}"
             for p in SRC.rglob("*.py") if p.parts[-2] not in ("tasks", "methods")
             and p.name != "config.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if compare.search(line)]
    assert found == []


@pytest.mark.parametrize("arch,task", [
    ("BertForSequenceClassification", "classify"), ("LlamaForCausalLM", "sft"),
    ("BertForMaskedLM", "mlm"), ("T5ForConditionalGeneration", "seq2seq"),
    ("EncoderDecoderModel", "seq2seq"), ("BertModel", "classify")])
def test_a_bare_model_dir_is_read_as_the_task_it_was_made_for(tmp_path, arch, task):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch]}))
    assert task_of_model(tmp_path).name == task


def test_the_learning_rate_defaults_to_the_methods_and_an_explicit_one_wins():
    for name, method in METHODS.items():
        assert load_config(None, [f"method={name}"]).train.lr == method.default_lr
    assert load_config(None, ["method=lora", "train.lr=3e-4"]).train.lr == 3e-4


def test_task_config_checks_run_when_the_config_loads():
    with pytest.raises(LmtuneError, match="task=seq2seq does not pack"):
        load_config(None, ["task=seq2seq", "data.packing=true"])
    with pytest.raises(LmtuneError, match="task=classify reads a text and a label"):
        load_config(None, ["data.format=chat"])
    with pytest.raises(LmtuneError, match="generate_samples > 0"):
        load_config(None, ["task=sft", "eval.metric=rougeL", "eval.generate_samples=0"])
    cfg = load_config(None, ["task=sft", "eval.metric=rougeL"])
    assert get_task("sft").metric_for(cfg, None) == "rougeL"
    assert get_task("mlm").metric_for(load_config(None, ["task=mlm"]), None) == "loss"

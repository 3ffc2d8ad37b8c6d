from pathlib import Path

import pytest

from lmtune.config import Config, describe, load_config
from lmtune.errors import LmtuneError

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_defaults_are_the_demo_job():
    cfg = load_config()
    assert (cfg.task, cfg.model, cfg.method, cfg.data.train) == \
        ("classify", "minilm", "full", "rotten_tomatoes")


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: lora\ntrain:\n  lr: 0.001\n  epochs: 2\nlora:\n  r: 4\n")
    cfg = load_config(p, ["train.lr=1e-4", "lora.target_modules=query,value", "seed=7"])
    assert cfg.method == "lora"
    assert cfg.train.lr == pytest.approx(1e-4)  # YAML 1.1 reads "1e-4" as a string
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert cfg.lora.r == 4 and cfg.lora.target_modules == ["query", "value"]
    assert cfg.seed == 7


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: minilm\ntrain:\n  epochs: 1\n  lrr: 0.1\n")
    with pytest.raises(LmtuneError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}:4" in msg and "'train.lrr'" in msg and "Did you mean 'train.lr'" in msg
    assert "train.batch_size" in msg  # the valid keys are listed


def test_unknown_override_suggests():
    with pytest.raises(LmtuneError, match="Did you mean 'method'"):
        load_config(None, ["methd=lora"])


@pytest.mark.parametrize("override, fragment", [
    ("method=galore", "method: must be one of full, lora"),
    ("train.batch_size=0", "train.batch_size: must be > 0"),
    ("train.batch_size=2.5", "expected int"),
    ("train.group_by_length=maybe", "expected bool"),
    ("train.precision=fp16", "must be one of auto, bf16, fp32"),
    ("train.distributed=zero", "must be one of ddp, fsdp, deepspeed"),
    ("train.zero_stage=4", "train.zero_stage: must be one of 1, 2, 3; got 4"),
    ("data.val_fraction=0.7", "must be in (0, 0.5)"),
    ("train=3", "is a section"),
    ("seed", "must look like key=value"),
    ("train.epochs=two", "train.epochs: expected float, got 'two'"),
    ("train.lr=true", "train.lr: expected float, got True"),
    ("train.batch_size=[1, 2]", "train.batch_size: expected int, got [1, 2]"),
    ("model={a: 1}", "model: expected str, got {'a': 1}"),
    ("lora.target_modules={q: 1}", "lora.target_modules: expected list"),
])
def test_bad_values_are_rejected_with_the_key(override, fragment):
    with pytest.raises(LmtuneError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)


def test_values_are_converted_to_their_keys_types():
    cfg = load_config(None, ["train.epochs=2", "train.lr=1e-4", "train.max_steps=40.0",
                             "lora.target_modules=q_proj, v_proj", "generate.stop=[END]"])
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 40
    assert isinstance(cfg.train.max_steps, int)
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.generate.stop == ["END"]


def test_a_key_under_a_value_is_not_a_section():
    with pytest.raises(LmtuneError, match="'train.lr.x': 'lr' is not a section"):
        load_config(None, ["train.lr=1e-4", "train.lr.x=1"])


def test_an_empty_config_file_is_the_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing set yet\n")
    assert load_config(p) == load_config(None)


def test_bad_value_in_yaml_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  schedule: exponential\n")
    with pytest.raises(LmtuneError, match=r"c\.yaml:2: train\.schedule: must be one of"):
        load_config(p)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(LmtuneError, match="must be a mapping"):
        load_config(p)
    p.write_text("train: [unclosed\n")
    with pytest.raises(LmtuneError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(LmtuneError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_resolved_yaml(tmp_path):
    from lmtune.config import config_yaml

    cfg = load_config(None, ["method=lora", "train.lr=2e-4", "lora.target_modules=query"])
    p = tmp_path / "config.yaml"
    p.write_text(config_yaml(cfg))
    assert load_config(p) == cfg


def test_every_key_has_help():
    rows = describe(Config)
    keys = {k for k, _, _ in rows}
    for required in ("task", "model", "method", "data.train", "data.validation", "data.test",
                     "data.text_column", "data.label_column", "train.epochs",
                     "train.max_steps", "train.batch_size", "train.lr", "train.max_length",
                     "seed", "output_dir"):
        assert required in keys
    assert all(h for _, _, h in rows)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_parse(path):
    assert isinstance(load_config(path), Config)


def test_configs_exist():
    assert len(CONFIGS) >= 3

"""`lmtune plan` and the memory guard, end to end: the probe's measurements on a small
random model, the CLI and its cache, the guard refusing a hopeless run before any weight is
read, and the prediction every run writes into summary.json."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmtune.config import load_config
from lmtune.errors import LmtuneError
from lmtune.plan.calibrate import calibrate
from tests.conftest import save_tiny_llama, write_csv


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory) -> Path:
    """A random Llama whose steps hold tens of megabytes (a vocabulary of 4,096: the logits
    of 4,096 tokens are 64 MB): what the probe measures must stand out of the allocator's
    noise. Narrow (hidden 128), so the probe's steps take little time."""
    return save_tiny_llama(tmp_path_factory.mktemp("small-llama"), vocab_size=4096,
                           hidden_size=128, intermediate_size=384,
                           max_position_embeddings=8192, tie_word_embeddings=False)


def clm_config(model, tmp_path, *extra):
    return load_config(None, ["task=clm", f"model={model}", "data.train=rotten_tomatoes",
                              f"cache_dir={tmp_path / 'cache'}", "train.threads=1",
                              "train.precision=fp32", f"output_dir={tmp_path / 'run'}",
                              *extra])


class Bar:
    """What a progress bar is told."""

    def __init__(self):
        self.totals, self.n = [], 0

    def refresh(self):
        self.totals.append(self.total)

    def update(self, k):
        assert self.totals, "a step before the bar's length"
        self.n += k


def test_the_probe_measures_activations_and_lora_holds_less_state(small_llama, tmp_path):
    """Measured, not assumed: the steps of the probe's shapes (up to 32 x 128 tokens) add
    memory per token (4,096 tokens through this model: activations and logits of well over
    20 MB), the fit grows with batch x length, and what full fine-tuning's first update adds
    (AdamW's moments of every weight) is above LoRA's by most of 8 bytes a parameter."""
    from transformers import AutoModelForCausalLM

    params = AutoModelForCausalLM.from_pretrained(small_llama).num_parameters()
    # Widths up to 128 (the probe's width-256 shape is for models that take it; not needed
    # to show what this test checks, and the longest of its steps).
    bar = Bar()
    full = calibrate(clm_config(small_llama, tmp_path, "method=full"), str(small_llama), None,
                     params, 128, bar)
    # The bar's length, given before the first step, is the number of steps that come.
    assert bar.totals == [bar.n] and bar.n > 20
    lora = calibrate(clm_config(small_llama, tmp_path, "method=lora"), str(small_llama), None,
                     params, 128)
    assert full.optimizer_mb - lora.optimizer_mb > 0.6 * 8 * params / 2**20
    small, large = full.step_mb(8, 128, 1024), full.step_mb(32, 128, 4096)
    assert large - small > 20
    assert full.step_mb(64, 256, 64 * 256) > large  # beyond the probe: still growing
    assert full.backward(32, 128, 4096) > full.backward(8, 128, 1024) > 0
    assert full.mixing >= 1.0 and lora.mixing >= 1.0
    # The rest of a run's time, measured too: the process up to loading the weights, one
    # checkpoint and the model dir, written beside the run's output and then removed.
    assert full.start_seconds > full.load_seconds > 0
    assert full.checkpoint_seconds > 0 and full.save_seconds > 0
    assert not list(tmp_path.glob(".lmtune-probe-*"))
    raw = json.loads(next((tmp_path / "cache" / "plan").glob("*.json")).read_text())
    assert [len(raw[k]) for k in ("early_steps", "before_validation_steps",
                                  "after_validation_steps")] == [2, 3, 2]
    assert min(raw["early_steps"] + raw["after_validation_steps"]) > 0
    assert all(p["first_seconds"] > 0 for p in raw["points"])  # each shape's first step


def test_plan_cli_prints_a_row_per_method_and_reuses_its_calibration(tiny_llama, chat_jsonl,
                                                                     tmp_path):
    args = [sys.executable, "-m", "lmtune", "plan", "task=sft", f"model={tiny_llama}",
            f"data.train={chat_jsonl}", f"cache_dir={tmp_path / 'cache'}", "train.threads=1",
            "--methods", "full,lora", "--json", str(tmp_path / "plan.json")]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stderr.count("plan: measuring") == 2
    # A bar while each method is measured, run to its end; the probe's own lines stay inside.
    assert "measuring full: 100%" in first.stderr and "measuring lora: 100%" in first.stderr
    assert "lmtune-probe-progress" not in first.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    rows = {r["method"]: r for r in plan["rows"]}
    assert set(rows) == {"full", "lora"} and plan["recommended"] in rows
    assert rows["full"]["trainable_params"] > rows["lora"]["trainable_params"]
    assert all(r["calibrated"] and r["seconds_per_step"] > 0 and r["total_seconds"] > 0
               for r in rows.values())
    assert "recommended:" in first.stdout and "lora" in first.stdout
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0 and "plan: measuring" not in again.stderr
    drop = lambda rows: [{k: v for k, v in r.items() if k != "total_seconds"}  # noqa: E731
                         for r in rows]  # (which holds the data's reading time, timed anew)
    assert drop(json.loads((tmp_path / "plan.json").read_text())["rows"]) == drop(plan["rows"])


def test_plan_measure_trains_the_method_and_prints_predicted_beside_measured(
        tiny_llama, chat_jsonl, tmp_path):
    done = subprocess.run([sys.executable, "-m", "lmtune", "plan", "task=sft",
                           f"model={tiny_llama}", f"data.train={chat_jsonl}",
                           f"cache_dir={tmp_path / 'cache'}", "train.threads=1",
                           "--methods", "lora", "--measure",
                           "--json", str(tmp_path / "plan.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plan: training lora for 16 steps (1 of 1)" in done.stderr
    [m] = json.loads((tmp_path / "plan.json").read_text())["measured"]
    # A real run of `lmtune train` beside the planner's (calibrated) prediction for it.
    assert m["method"] == "lora" and m["calibrated"] and len(m["step_seconds"]) == 16
    assert m["peak_memory_mb"] > 0 and m["seconds_per_step"] > 0
    assert m["memory_error"] == pytest.approx(m["predicted_peak_mb"] / m["peak_memory_mb"] - 1)
    assert "predicted vs measured" in done.stdout
    assert f"lora     peak {m['predicted_peak_mb']:,.0f} vs" in done.stdout


def test_plan_leaves_out_what_does_not_suit_and_measures_nothing_that_cannot_fit(
        tiny_llama, chat_jsonl, tmp_path, monkeypatch, capsys):
    """The default methods on a Llama (no biases: BitFit does not apply) with 1 MB
    available: each remaining method gets an unmeasured row that does not fit, no
    calibration starts, and the plan says that none fits."""
    import lmtune.plan.planner as planner_module
    from lmtune.plan.command import format_plan, make_plan

    monkeypatch.setattr(planner_module, "available_mb", lambda: 1.0)
    cfg = load_config(None, ["task=sft", f"model={tiny_llama}", f"data.train={chat_jsonl}",
                             f"cache_dir={tmp_path / 'cache'}", "train.threads=1"])
    plan = make_plan(cfg, planner_module.candidates(cfg))
    err = capsys.readouterr().err
    assert "plan: bitfit left out" in err and "plan: measuring" not in err
    assert err.count("the model alone needs about") == 5
    assert [r["method"] for r in plan["rows"]] == ["full", "lora", "dora", "ia3", "freeze"]
    assert not any(r["fits"] or r["calibrated"] for r in plan["rows"])
    assert all(r["peak_memory_mb"] > 1 and r["seconds_per_step"] is None
               for r in plan["rows"])
    assert plan["recommended"] is None and plan["why"].startswith("no method fits in 1 MB")
    text = format_plan(plan)
    assert text.count(" NO") == 5 and "* not measured" in text and "recommended: none" in text
    assert not (tmp_path / "cache" / "plan").exists()


def test_plan_refuses_a_method_that_does_not_exist(tiny_llama, chat_jsonl, tmp_path):
    done = subprocess.run([sys.executable, "-m", "lmtune", "plan", "task=sft",
                           f"model={tiny_llama}", f"data.train={chat_jsonl}",
                           "--methods", "lora,nope"], capture_output=True, text=True)
    assert done.returncode == 2 and "method" in done.stderr and "nope" in done.stderr


def encoded(cfg, task, path: str) -> dict:
    """The config's data, tokenized as `lmtune train` tokenizes it."""
    from lmtune.models.load import load_model_config, load_tokenizer
    from lmtune.prepare import encode_or_cached

    enc, _, _ = encode_or_cached(cfg, task, task.read(cfg), load_tokenizer(path, False),
                                 load_model_config(path, False), path)
    return enc


def long_texts(path: Path, rows: int, words: int) -> Path:
    text = " ".join(["the cat sat on the mat"] * (words // 6))
    return write_csv(path, [{"text": text} for _ in range(rows)])


def test_the_guard_refuses_a_hopeless_run_before_reading_any_weight(small_llama, tmp_path,
                                                                      monkeypatch):
    """Full fine-tuning at 512 rows x 4,096 tokens a batch: refused in seconds, with the
    change that fits; the weights are never loaded."""
    import lmtune.prepare
    from lmtune.train import train

    def never(*a, **k):
        raise AssertionError("the guard let the model load")

    monkeypatch.setattr(lmtune.prepare, "load_pretrained", never)
    data = long_texts(tmp_path / "long.csv", 600, 4200)
    cfg = clm_config(small_llama, tmp_path, "method=full", f"data.train={data}",
                     "train.batch_size=512", "train.max_length=4096", "data.cache=false")
    began = time.monotonic()
    with pytest.raises(LmtuneError) as refused:
        train(cfg, progress=False)
    assert time.monotonic() - began < 60
    message = str(refused.value)
    assert "predicted peak memory" in message and "MB available" in message
    assert "train.memory_guard=false" in message
    assert not (tmp_path / "run").exists()


def test_the_guard_names_the_smaller_batch_that_fits(small_llama, tmp_path, monkeypatch):
    """With the memory available set below the run's prediction but above that of half its
    batch, the advice is a smaller batch with accumulation (the same effective batch);
    train.memory_guard=false lets the same run through."""
    import lmtune.plan.guard as guard_module
    from lmtune.tasks import get_task
    from lmtune.train import train

    data = long_texts(tmp_path / "long.csv", 200, 1000)
    cfg = clm_config(small_llama, tmp_path, "method=full", f"data.train={data}",
                     "train.batch_size=64", "train.max_length=1024")
    task, path = get_task("clm"), str(small_llama)
    enc = encoded(cfg, task, path)
    whole = guard_module.guard(cfg, task, enc, path, None, "fp32", 1)["peak_memory_mb"]
    monkeypatch.setattr(guard_module, "available_mb", lambda: whole * 0.8)
    with pytest.raises(LmtuneError, match=r"train.batch_size=32 train.grad_accum=2 keeps"):
        train(cfg, progress=False)
    cfg.train.memory_guard = False
    again = guard_module.guard(cfg, task, enc, path, None, "fp32", 1)  # no error now
    assert again["peak_memory_mb"] == pytest.approx(whole, rel=0.05)  # the process grew a bit


def test_the_guard_advises_a_shorter_length_then_lora_then_names_what_to_combine(
        small_llama, tmp_path, monkeypatch):
    """At batch size 1 no smaller batch exists: with the memory available set between the
    predictions of the changes, the advice is the first change that fits, in the order of
    what it costs the run."""
    import lmtune.plan.guard as guard_module
    import lmtune.plan.planner as planner_module
    from lmtune import runtime
    from lmtune.tasks import get_task

    data = long_texts(tmp_path / "long.csv", 40, 1000)
    task, path = get_task("clm"), str(small_llama)
    # The process the predictions start from held still: this test process's memory and
    # its peak (what earlier tests left) are not what is being tested here.
    monkeypatch.setattr(planner_module, "memory_mb", lambda: 400.0)
    monkeypatch.setattr(runtime, "peak_memory_mb", lambda: 0.0)

    def guard(available, *extra):
        cfg = clm_config(small_llama, tmp_path, f"data.train={data}", "train.batch_size=1",
                         *extra)
        monkeypatch.setattr(guard_module, "available_mb", lambda: available)
        return guard_module.guard(cfg, task, encoded(cfg, task, path), path, None, "fp32", 1)

    def peak(*extra):
        return guard(1e9, *extra)["peak_memory_mb"]

    def refused(available, *extra):
        with pytest.raises(LmtuneError) as e:
            guard(available, "method=full", *extra)
        return str(e.value)

    full, half = peak("method=full", "train.max_length=1024"), \
        peak("method=full", "train.max_length=512")
    lora_full_length = peak("method=lora", "train.max_length=1024")
    assert full > max(half, lora_full_length)
    # Both would fit; the shorter length keeps the method, so it comes first.
    between = (full + max(half, lora_full_length)) / 2
    assert "train.max_length=512 is predicted to fit" in refused(between,
                                                                 "train.max_length=1024")
    # 64 tokens: halved once to 32, the shortest tried; the optimizer state of full
    # fine-tuning then outweighs what the tokens hold.
    shortest, lora = peak("method=full", "train.max_length=32"), \
        peak("method=lora", "train.max_length=64")
    assert shortest > lora
    assert "method=lora is predicted to fit" in refused((shortest + lora) / 2,
                                                        "train.max_length=64")
    combine = refused(lora * 0.95, "train.max_length=64")
    assert "no single change is predicted to fit" in combine
    assert "train.gradient_checkpointing=true" in combine


def test_every_run_records_predicted_beside_measured(tiny_llama, chat_jsonl, tmp_path):
    from lmtune.train import train

    cfg = load_config(None, ["task=sft", f"model={tiny_llama}", f"data.train={chat_jsonl}",
                             f"output_dir={tmp_path / 'run'}", "train.threads=1",
                             "train.max_steps=3", "eval.generate_samples=0"])
    train(cfg, progress=False)
    check = json.loads((tmp_path / "run" / "summary.json").read_text())["plan"]
    assert check["predicted"]["peak_memory_mb"] > 0
    assert check["predicted"]["calibrated"] is False  # no `lmtune plan` measured it here
    assert check["measured"]["peak_memory_mb"] > 0 and check["measured"]["seconds_per_step"] > 0


def test_synthetic_rows_take_the_shape_each_task_trains_on(tiny_llama):
    from lmtune.tasks import get_task

    sft = get_task("sft").synthetic_rows(3, 16, 4, 100, 0)
    assert len(sft.input_ids) == 3 and all(len(r) == 16 for r in sft.input_ids)
    assert get_task("sft").trained_tokens(sft, [0, 1, 2]) == 12
    cls = get_task("classify").synthetic_rows(5, 8, 8, 100, 3)
    assert all(0 <= y < 3 for y in cls.labels)
    assert get_task("classify").trained_tokens(cls, [0, 1]) == 0

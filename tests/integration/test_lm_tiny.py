"""Decoder and encoder LM tasks on tiny random models: SFT, packing, accumulation, CLM, MLM."""
import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.data.collate import Encoded
from lmtune.data.formats import Message
from lmtune.data.lm import Report, pack
from lmtune.data.packing import best_fit
from lmtune.data.templates import tokenize_conversation
from lmtune.tasks import get_task
from lmtune.prepare import prepare
from lmtune.train import evaluate_split, finish, fit
from tests.conftest import (CHAT_WORDS, chat_rows, metric_rows, sentiment_rows, train_tracked,
                            write_csv)
from tests.methods import case, names

SFT = ["task=sft", "train.precision=fp32", "train.threads=1", "train.batch_size=8",
       "train.lr=3e-3", "train.warmup=0", "train.log_every=1", "train.max_length=64",
       "train.min_steps=0"]


def train_losses(run_dir):
    return [r["loss"] for r in metric_rows(run_dir) if "lr" in r]


@pytest.mark.parametrize("method", names("llama-sft"))
def test_sft_learns_and_writes_a_complete_run_dir(tiny_llama, chat_jsonl, tmp_path, method):
    out = tmp_path / "run"
    cfg = load_config(None, [*SFT, f"model={tiny_llama}", f"data.train={chat_jsonl}",
                             f"output_dir={out}", "train.epochs=4", *case(method).config()])
    s, result, base, unchanged = train_tracked(cfg)
    assert not unchanged  # every trainable tensor moved
    # adapters on a frozen *random* base learn slowly; on a real model it is another story
    gain = case(method).learns
    curve = train_losses(out)
    assert sum(curve[-3:]) / 3 < gain * sum(curve[:3]) / 3
    assert result.test["loss"] < gain * base["loss"]  # held-out conversations
    assert result.test["perplexity"] == pytest.approx(torch.tensor(result.test["loss"]).exp()
                                                      .item(), rel=1e-5)
    report = json.loads((out / "data_report.json").read_text())
    assert report["samples"] == len(s.data["train"]) and report["unlearnable"] == 0
    assert 0 < report["trained_tokens"] < report["tokens"]
    assert report["role_tokens"]["assistant"] > 0 and report["role_tokens"]["user"] > 0
    weights = "adapter_model.safetensors" if case(method).method.adapter \
        else "model.safetensors"
    assert (out / "model" / weights).exists() and (out / "model" / "chat_template.jinja").exists()
    assert json.loads((out / "eval.json").read_text())["test"]["loss"] == result.test["loss"]


def conv(words):
    return [Message("user", "repeat: " + " ".join(words)), Message("assistant", " ".join(words))]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_losses_and_gradients_equal_unpacked_per_sample(tiny_llama, attention):
    """Each sample alone, unpacked, vs the same sample inside a packed row (the other samples'
    targets off): equal loss and gradients, so no sample sees another."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation=attention,
                                                 dtype=torch.float32)
    samples = [tokenize_conversation(tok, conv(CHAT_WORDS[i:i + 2 + i % 4]), "assistant", 64)
               for i in range(5)]
    unpacked = Encoded([t.input_ids for t in samples], trained=[t.trained for t in samples])
    packed = pack(unpacked, 256, 1, Report())
    assert len(packed) == 1 and len(packed.segments[0]) == 5  # all five in one row

    def loss_and_grads(data, idx):
        model.zero_grad()
        task = get_task("sft")
        batch = task.batch(data, idx, tok.pad_token_id, "cpu")
        loss = task.loss_sum(model, batch, contextlib.nullcontext)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    lengths = [len(x) for x in unpacked.input_ids]
    start = 0
    for i in best_fit(lengths, 256)[0]:  # the order pack() placed them in
        only_i = [False] * len(packed.input_ids[0])
        only_i[start:start + lengths[i]] = unpacked.trained[i]
        one = Encoded(packed.input_ids, trained=[only_i], segments=packed.segments)
        got_loss, got = loss_and_grads(one, [0])
        want_loss, want = loss_and_grads(unpacked, [i])
        assert want_loss > 0
        torch.testing.assert_close(got_loss, want_loss, atol=1e-5, rtol=0)
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)
        start += lengths[i]


@pytest.mark.parametrize("packing", [False, True])
def test_accumulation_equals_one_big_batch(tiny_llama, chat_jsonl, tmp_path, packing):
    """k micro-batches of b rows give the weights of one batch of k*b rows: the loss is the
    mean over the trained tokens of the whole effective batch, however they are split."""
    common = [*SFT, f"model={tiny_llama}", f"data.train={chat_jsonl}", "train.max_steps=3",
              "train.group_by_length=false", f"data.packing={str(packing).lower()}",
              "attention=eager"]  # sdpa's CPU kernel rounds differently per batch shape
    for name, extra in (("big", ["train.batch_size=8"]),
                        ("accum", ["train.batch_size=2", "train.grad_accum=4"])):
        assert main(["train", "--quiet", *common, *extra, f"output_dir={tmp_path / name}"]) == 0
    a = load_file(tmp_path / "big" / "model" / "model.safetensors")
    b = load_file(tmp_path / "accum" / "model" / "model.safetensors")
    for k in a:
        # Adam divides by sqrt(v): where a gradient is about 0, the last-bit differences of
        # the two runs' reductions grow toward lr-sized steps. On AVX-512 hosts every element
        # agreed within 2e-6; on an AVX2-only AMD host 1 of 2,048 read 7.3e-6. So nearly
        # all must agree to 2e-6 and the odd one to 1% of the 3 steps' lr.
        off = ((a[k] - b[k]).abs() > 2e-6 + 1e-5 * b[k].abs()).float().mean().item()
        assert off <= 0.002, f"{k}: {off:.2%} of the elements differ by more than 2e-6"
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-5,
                                   msg=lambda m, k=k: f"{k}: {m}")
    assert train_losses(tmp_path / "big") == pytest.approx(train_losses(tmp_path / "accum"),
                                                           rel=1e-5)


def test_packing_reports_less_padding(tiny_llama, chat_jsonl, tmp_path):
    assert main(["train", "--quiet", *SFT, f"model={tiny_llama}", f"data.train={chat_jsonl}",
                 "train.max_steps=1", "data.packing=true", f"output_dir={tmp_path}"]) == 0
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["padding_packed"] < report["padding_unpacked"]


def test_a_sample_with_nothing_to_train_stops_the_run_or_is_dropped(tiny_llama, tmp_path,
                                                                     capsys):
    rows_ = [{"messages": [{"role": "user", "content": "repeat: " + "the cat " * k},
                           {"role": "assistant", "content": "the cat"}]} for k in range(1, 40)]
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_))
    args = ["train", "--quiet", *SFT, f"model={tiny_llama}", f"data.train={path}",
            f"data.validation={path}", "train.max_steps=1", "train.max_length=32",
            "data.truncation=end", f"output_dir={tmp_path / 'run'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "long.jsonl:" in err and "no token left to train on" in err
    assert not (tmp_path / "run").exists()
    assert main(args + ["data.drop_unlearnable=true"]) == 0
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["dropped"] == report["unlearnable"] > 0 and report["truncated"] > 0


def test_clm_lowers_held_out_perplexity(tiny_llama, tmp_path):
    texts = [" ".join(CHAT_WORDS[i % 7:i % 7 + 8]) for i in range(200)]
    data = write_csv(tmp_path / "domain.csv", [{"text": t} for t in texts])
    cfg = load_config(None, [*SFT, "task=clm", f"model={tiny_llama}", f"data.train={data}",
                             f"output_dir={tmp_path / 'run'}", "train.epochs=2",
                             "data.packing=true"])
    s = prepare(cfg)
    base = evaluate_split(s, "test")["perplexity"]
    tuned = finish(s, fit(s, progress=False)).test["perplexity"]
    assert tuned < 0.5 * base


def test_mlm_then_classification_from_its_output(tiny_bert, tmp_path):
    data = write_csv(tmp_path / "reviews.csv", sentiment_rows(200))
    mlm = tmp_path / "mlm"
    cfg = load_config(None, ["task=mlm", f"model={tiny_bert}", f"data.train={data}",
                             f"output_dir={mlm}", "train.precision=fp32", "train.threads=1",
                             "train.batch_size=16", "train.lr=3e-3", "train.epochs=6",
                             "train.log_every=1"])
    s = prepare(cfg)
    base = evaluate_split(s, "validation")["loss"]
    result = finish(s, fit(s, progress=False))
    assert result.best["loss"] < 0.95 * base  # random filler words: little to learn
    assert main(["train", "--quiet", f"model={mlm / 'model'}", f"data.train={data}",
                 f"output_dir={tmp_path / 'clf'}", "train.precision=fp32", "train.threads=1",
                 "train.max_steps=5"]) == 0
    assert json.loads((tmp_path / "clf" / "eval.json").read_text())["test"]["accuracy"] >= 0


@pytest.mark.parametrize("method", [m for m in names("llama-sft") if case(m).checkpointing])
def test_gradient_checkpointing_trains_the_same_weights(tiny_llama, chat_jsonl, tmp_path,
                                                        method):
    common = [*SFT, f"model={tiny_llama}", f"data.train={chat_jsonl}", "train.max_steps=3",
              f"method={method}", "lora.dropout=0"]
    for name, gc in (("plain", "false"), ("gc", "true")):
        assert main(["train", "--quiet", *common, f"train.gradient_checkpointing={gc}",
                     f"output_dir={tmp_path / name}"]) == 0
    weights = "adapter_model.safetensors" if case(method).method.adapter \
        else "model.safetensors"
    a = load_file(tmp_path / "plain" / "model" / weights)
    b = load_file(tmp_path / "gc" / "model" / weights)
    assert a.keys() == b.keys()
    for k in a:  # recomputation repeats the forward exactly: no dropout, same kernels
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
    s = prepare(load_config(None, [*common, "train.gradient_checkpointing=true",
                                   f"output_dir={tmp_path / 'on'}"]))
    assert any(getattr(m, "gradient_checkpointing", False) for m in s.model.modules())


def long_prompt_rows(n: int) -> list[dict]:
    """Chats whose question runs past the tiny Llama's 256 positions; the answer is short."""
    rows = chat_rows(n)
    for r in rows[: n // 4]:
        r["messages"][0]["content"] = "context: " + " ".join(CHAT_WORDS * 30) + " " + \
            r["messages"][0]["content"]
    return rows


def test_sft_defaults_fit_long_prompts_and_keep_the_answer(tiny_llama, tmp_path):
    """The task's own length (1024, capped at the model's 256 positions) and prompt-middle
    truncation: a prompt longer than the model's positions costs prompt tokens, and every
    answer is trained whole. Cutting the end instead leaves those rows no answer."""
    from transformers import AutoTokenizer

    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in long_prompt_rows(40)))
    common = ["task=sft", f"model={tiny_llama}", f"data.train={data}", "train.threads=1",
              "train.max_steps=2", "train.precision=fp32", "eval.generate_samples=0"]
    cfg = load_config(None, [*common, f"output_dir={tmp_path / 'run'}"])
    assert cfg.train.max_length == 1024
    s = prepare(cfg)
    assert s.cfg.train.max_length == 256  # capped at the model's positions
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["truncated"] > 0 and report["unlearnable"] == 0
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    for conv in s.data["train"].input_ids:  # every long row ends with its whole answer
        assert len(conv) <= 256
    long_rows = [i for i, ids in enumerate(s.data["train"].input_ids) if len(ids) == 256]
    assert long_rows
    for i in long_rows:
        ids, trained = s.data["train"].input_ids[i], s.data["train"].trained[i]
        answer = tok.decode([t for t, keep in zip(ids, trained) if keep])
        assert answer.strip().startswith(tuple(CHAT_WORDS))
        assert tok.decode(ids[:40]).count("context") == 1  # the prompt's start stays
    assert main(["train", "--quiet", *common, "data.truncation=end",
                 f"output_dir={tmp_path / 'end'}"]) == 2  # no token left to train on


def test_a_max_length_beyond_the_models_positions_is_an_error_when_set(tiny_llama, chat_jsonl,
                                                                        tmp_path, capsys):
    assert main(["train", "--quiet", "task=sft", f"model={tiny_llama}",
                 f"data.train={chat_jsonl}", "train.max_length=1024",
                 f"output_dir={tmp_path / 'run'}"]) == 2
    assert "1024 is more than the 256 positions" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

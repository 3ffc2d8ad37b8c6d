"""`lmtune export`: merged HF dirs load without peft and match the run, the adapter dir stays
plain peft, ONNX matches in onnxruntime, and what cannot be exported is a clear error."""
import json

import pytest
import torch

from lmtune.cli import main
from lmtune.export import SAMPLE, export_run, logits, sample_batch
from lmtune.rundir import open_run
from tests.methods import case, names

TINY = ["train.precision=fp32", "train.threads=1", "train.max_steps=4", "train.warmup=0",
        "train.batch_size=16", "train.max_length=64", "eval.generate_samples=0"]


def train(tmp_path, name, *extra):
    out = tmp_path / name
    assert main(["train", "--quiet", *TINY, f"output_dir={out}", *extra]) == 0
    return out


@pytest.fixture
def classify(tiny_bert, sentiment_csv, tmp_path):
    return lambda method: train(tmp_path, method, f"model={tiny_bert}",
                                f"data.train={sentiment_csv}", *case(method).config())


def run_logits(run_dir):
    model, tok = open_run(run_dir).load(attention="eager")
    return logits(model, sample_batch(tok))


@pytest.mark.parametrize("method", ["full", *names("bert-classify", mergeable=True)])
def test_merged_export_loads_without_peft_and_matches_the_run(classify, tmp_path, method):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = classify(method)
    out = tmp_path / "merged"
    assert main(["export", str(run), str(out), "--merge"]) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["parity"]["max_abs_logit_diff"] <= 1e-4
    assert report["merged"] == case(method).method.adapter
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out, attn_implementation="eager")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    got = logits(model, sample_batch(AutoTokenizer.from_pretrained(out)))
    torch.testing.assert_close(got, run_logits(run), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", names("bert-classify", adapter=True))
def test_the_adapter_dir_stays_loadable_by_plain_peft(classify, tmp_path, method):
    from peft import AutoPeftModelForSequenceClassification

    from lmtune.models.load import quantization_config, train_safe_4bit

    run = classify(method)
    quantize = case(method).method.quantize  # a 4-bit base is loaded as training had it
    kwargs = {} if quantize == "none" else {
        "quantization_config": quantization_config(quantize, ("classifier",))}
    model = AutoPeftModelForSequenceClassification.from_pretrained(run / "model", **kwargs)
    train_safe_4bit(model)  # bitsandbytes' repacked CPU kernel fails on the tiny shapes
    tok = open_run(run).load()[1]
    if method == "prefix":  # peft alone cannot pass a prefix to a transformers 5 encoder
        with pytest.raises(ValueError, match="does not support past key values"):
            logits(model, sample_batch(tok))
        return
    torch.testing.assert_close(logits(model, sample_batch(tok)), run_logits(run))
    if method == "lora":
        report = export_run(run, tmp_path / "adapter")  # without --merge: the adapter dir
        assert (tmp_path / "adapter" / "adapter_config.json").exists()
        assert report["merged"] is False and report["parity"]["max_abs_logit_diff"] == 0


@pytest.mark.parametrize("method", names("bert-classify", adapter=True, mergeable=False))
def test_an_adapter_that_cannot_merge_is_a_clear_error(classify, tmp_path, capsys, method):
    run = classify(method)
    assert main(["export", str(run), str(tmp_path / "x"), "--merge"]) == 2
    assert "cannot be merged" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing half-written
    report = export_run(run, tmp_path / "adapter")  # as an adapter dir, it exports
    assert report["merged"] is False and report["parity"]["max_abs_logit_diff"] == 0


def test_a_failed_parity_check_writes_nothing(classify, tmp_path, monkeypatch):
    import lmtune.export as export
    from lmtune.errors import LmtuneError

    run = classify("full")
    monkeypatch.setattr(export, "LIMITS", {"hf": -1.0, "onnx": -1.0})  # nothing passes
    with pytest.raises(LmtuneError, match="parity failed"):
        export_run(run, tmp_path / "out", merge=True)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))  # no temp dir left either


@pytest.mark.parametrize("kind", ["classify", "sft"])
def test_onnx_export_matches_in_onnxruntime_on_new_shapes(kind, classify, tiny_llama,
                                                          chat_jsonl, tmp_path):
    import onnxruntime

    run = classify("lora") if kind == "classify" else train(
        tmp_path, "sft", "task=sft", f"model={tiny_llama}", f"data.train={chat_jsonl}",
        *case("lora").config())
    out = tmp_path / "onnx"
    assert main(["export", str(run), str(out), "--format", "onnx"]) == 0
    assert json.loads((out / "export.json").read_text())["parity"]["max_abs_logit_diff"] \
        <= 1e-3
    # a batch and length the export never saw: the axes are dynamic
    model, tok = open_run(run).load(attention="eager")
    enc = tok(SAMPLE[:3] + ["one more row, the longest of them all by a few words"],
              padding=True, return_tensors="pt")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    got = session.run(None, {"input_ids": enc["input_ids"].numpy(),
                             "attention_mask": enc["attention_mask"].numpy()})[0]
    want = logits(model, {"input_ids": enc["input_ids"],
                          "attention_mask": enc["attention_mask"]})
    assert float((torch.from_numpy(got) - want).abs().max()) <= 1e-3


def test_onnx_is_refused_for_encoder_decoders(tiny_t5, pairs_jsonl, tmp_path, capsys):
    run = train(tmp_path, "s2s", "task=seq2seq", f"model={tiny_t5}", f"data.train={pairs_jsonl}")
    assert main(["export", str(run), str(tmp_path / "o"), "--format", "onnx"]) == 2
    assert "not task=seq2seq" in capsys.readouterr().err

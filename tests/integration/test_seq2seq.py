"""task=seq2seq on tiny random T5, BART and bert2bert: the loss falls, targets are shifted
right behind the decoder start token, generation at eval, the eval round trip, pipeline."""
import json

import pytest

from lmtune import pipeline
from lmtune.cli import main
from lmtune.config import load_config
from lmtune.data.collate import collate_seq2seq
from lmtune.data.formats import Message
from lmtune.data.lm import Report
from lmtune.data.seq2seq import encode_seq2seq
from lmtune.prepare import prepare
from lmtune.train import fit
from tests.conftest import FILLER, metric_rows, train_tracked

S2S = ["task=seq2seq", "train.precision=fp32", "train.threads=1", "train.batch_size=8",
       "train.warmup=0", "train.log_every=1", "train.max_length=32",
       "generate.max_new_tokens=12", "eval.generate_samples=8", "train.min_steps=0"]


def copy_rows(n: int) -> list[dict]:
    """source/target pairs in the tiny BERT's word vocabulary: the target copies the source."""
    import random

    rng = random.Random(0)
    rows = []
    for _ in range(n):
        words = " ".join(rng.sample(FILLER, rng.randint(2, 5)))
        rows.append({"source": words, "target": words})
    return rows


@pytest.fixture(scope="module")
def bert_pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert-pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in copy_rows(160)))
    return path


@pytest.mark.parametrize("kind,method,lr", [("t5", "full", 1e-2), ("bart", "full", 1e-2),
                                            ("bert2bert", "full", 3e-3), ("t5", "lora", 3e-2)])
def test_seq2seq_learns_and_generates(kind, method, lr, request, pairs_jsonl, bert_pairs,
                                      tmp_path):
    model = request.getfixturevalue(f"tiny_{kind}")
    data = bert_pairs if kind == "bert2bert" else pairs_jsonl
    out = tmp_path / "run"
    cfg = load_config(None, [*S2S, f"model={model}", f"data.train={data}", f"output_dir={out}",
                             f"method={method}", "train.epochs=8", "lora.dropout=0",
                             f"train.lr={lr}"])
    _, result, base, unchanged = train_tracked(cfg)
    # bert2bert's encoder keeps BERT's pooler, which nothing reads (EncoderDecoderModel
    # rebuilds it on every load), so it gets no gradient
    assert all(".pooler." in n for n in unchanged)
    curve = [r["loss"] for r in metric_rows(out) if "lr" in r]
    gain = 0.7 if method == "full" else 0.95
    assert sum(curve[-3:]) / 3 < gain * sum(curve[:3]) / 3
    assert result.test["loss"] < gain * base["loss"]
    # validation during training generated text and scored it
    val = [r for r in metric_rows(out) if r.get("split") == "validation"]
    assert val and all(0 <= r["rougeL"] <= 100 and 0 <= r["chrf"] <= 100 for r in val)
    gen = pipeline(out, precision="fp32")
    texts = gen(["repeat: the cat sat", "the film was"])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_targets_are_shifted_right_behind_the_start_token(tiny_bert2bert, tiny_t5):
    from transformers import AutoTokenizer

    for model_dir, start in ((tiny_t5, 0), (tiny_bert2bert, 2)):  # T5: <pad>; BERT: [CLS]
        tok = AutoTokenizer.from_pretrained(model_dir)
        conv = [Message("user", "the film was"), Message("assistant", "the film")]
        enc = encode_seq2seq(tok, [conv], ["x:1"], 32, start, Report())
        target = tok(text_target="the film")["input_ids"]
        if target[0] == start:  # BERT's [CLS] opens every text: not a target
            target = target[1:]
        assert enc.targets[0] == target and target[-1] == tok.eos_token_id or \
            target[-1] == tok.sep_token_id
        assert enc.decoder_ids[0] == [start] + target[:-1]
        batch = collate_seq2seq(enc, [0], tok.pad_token_id)
        n = len(target)
        assert batch["targets"][0, :n].tolist() == target
        assert (batch["targets"][0, n:] == -100).all()
        # a long source is cut to max_length with its closing special token kept, and counted
        rep = Report()
        long = [Message("user", "the film was " * 10), Message("assistant", "the film")]
        cut = encode_seq2seq(tok, [long], ["x:2"], 6, start, rep).input_ids[0]
        whole = tok("the film was " * 10)["input_ids"]
        assert len(cut) == 6 and cut[-1] == whole[-1] and cut[:3] == whole[:3]
        assert rep.truncated == 1


def test_loss_matches_the_models_own_teacher_forced_loss(tiny_bart, pairs_jsonl, tmp_path):
    """Our shifted decoder inputs and summed loss equal what BART computes from labels."""
    from lmtune.tasks import get_task

    cfg = load_config(None, [*S2S, f"model={tiny_bart}", f"data.train={pairs_jsonl}",
                             f"output_dir={tmp_path / 'run'}"])
    s = prepare(cfg)
    data = s.data["train"]
    idx = list(range(6))
    task = get_task("seq2seq")
    batch = task.batch(data, idx, s.pad_id, "cpu")
    ours = task.loss_sum(s.model, batch, s.autocast) / data.count_units(idx)
    theirs = s.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["targets"]).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_eval_round_trip_with_base_comparison(tiny_t5, pairs_jsonl, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *S2S, f"model={tiny_t5}", f"data.train={pairs_jsonl}",
                 f"output_dir={out}", "train.epochs=2", "train.lr=3e-3", "--quiet"]) == 0
    preds = tmp_path / "preds.jsonl"
    assert main(["eval", str(out), "--compare-base", "--output", str(preds),
                 "eval.max_samples=6"]) == 0
    result = json.loads((out / "eval.json").read_text())
    for part in (result["test"], result["base"]["test"]):
        assert {"loss", "perplexity", "rougeL", "bleu", "chrf", "exact_match"} <= set(part)
    assert result["test"]["loss"] < result["base"]["test"]["loss"]
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(rows) == 6 and {"prompt", "reference", "text", "base_text"} <= set(rows[0])
    assert "rougeL" in capsys.readouterr().out
    assert main(["predict", str(out), "the cat"]) == 2  # labels are for classifiers
    assert "lmtune generate" in capsys.readouterr().err


def test_best_model_picked_by_a_generation_metric(tiny_t5, pairs_jsonl, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, [*S2S, f"model={tiny_t5}", f"data.train={pairs_jsonl}",
                             f"output_dir={out}", "train.epochs=2", "train.lr=3e-3",
                             "train.eval_every=4", "eval.metric=chrf"])
    s = prepare(cfg)
    state = fit(s, progress=False)
    val = [r for r in metric_rows(out) if r.get("split") == "validation"]
    best = max(val, key=lambda r: r["chrf"])
    assert state.best["step"] == best["step"] and state.best["chrf"] == best["chrf"]


def test_a_generation_metric_needs_generation(tmp_path):
    from lmtune.errors import LmtuneError

    with pytest.raises(LmtuneError, match="generate_samples"):
        load_config(None, ["task=seq2seq", "eval.metric=rougeL", "eval.generate_samples=0"])
    with pytest.raises(LmtuneError, match="task=sft or seq2seq"):
        load_config(None, ["task=clm", "eval.metric=bleu"])


@pytest.mark.slow
def test_minilm2minilm_is_built_once_and_trains_on_aclsum(tmp_path):
    """The real alias: a bert2bert from MiniLM, decoding from [CLS] to [SEP]."""
    from transformers import AutoConfig

    from lmtune.models.load import resolve_model

    cache = tmp_path / "cache"
    path = resolve_model("minilm2minilm", str(cache))
    assert resolve_model("minilm2minilm", str(cache)) == path  # built once, then reused
    config = AutoConfig.from_pretrained(path)
    assert (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id) == \
        (101, 102, 0)  # [CLS], [SEP], [PAD] in MiniLM's vocabulary
    assert config.decoder.is_decoder and config.decoder.add_cross_attention
    out = tmp_path / "run"
    assert main(["train", "--quiet", "task=seq2seq", "model=minilm2minilm",
                 f"cache_dir={cache}", "data.train=aclsum", "data.max_samples=24",
                 "train.max_steps=4", "train.batch_size=4", "train.max_length=64",
                 "train.lr=3e-4", "train.log_every=1", "eval.generate_samples=4",
                 "generate.max_new_tokens=8", f"output_dir={out}"]) == 0
    losses = [r["loss"] for r in metric_rows(out) if "lr" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    text = pipeline(out)("Summarize the approach of this paper in one sentence.\n\nWe train "
                         "a parser on treebanks.")
    assert isinstance(text, str) and "[CLS]" not in text and "[SEP]" not in text


def test_eval_budget_counts_the_decoder_tokens(tiny_t5, monkeypatch):
    """Short sources with long targets (summaries the other way round, translation into a
    wordier language): the decoder's [B, T, V] logits must stay inside the token budget."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    import lmtune.eval.batched as eval_batched
    from lmtune.data.collate import Encoded
    from lmtune.tasks import EvalSettings, get_task

    data = Encoded([[5, 6, 7, 1]] * 40, decoder_ids=[[0] + [8] * 62] * 40,
                   targets=[[8] * 62 + [1]] * 40)
    shapes = []
    task = get_task("seq2seq")
    real = task.batch
    make_batch = lambda *a: shapes.append(  # noqa: E731
        tuple(real(*a)["decoder_input_ids"].shape)) or real(*a)
    monkeypatch.setattr(eval_batched, "EVAL_TOKENS", 512)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5, dtype=torch.float32)
    got = eval_batched.evaluate_loss(model, data, make_batch, task.loss_sum,
                                     EvalSettings(batch_size=64, pad_id=0))
    assert got["n"] == 40 and len(shapes) > 1
    assert all(rows * width <= 512 for rows, width in shapes), shapes

"""The tokenized-data cache: a second run reads exactly what the first tokenized, for every
kind of encoded data; any change to the rows, the tokenizer or a setting is a new entry; a
damaged entry is made again; data.cache=false writes nothing."""
import dataclasses
import json
import shutil

import numpy as np
import pytest

from lmtune.config import load_config
from lmtune.data.cache import DataCache
from lmtune.data.collate import encode
from lmtune.prepare import prepare


def entries(cache):
    root = cache / "data"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) \
        if root.exists() else []


def same(a, b):
    """Two `Encoded` equal field by field, with the same container types."""
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "ref":
            continue
        if isinstance(x, list) and x and isinstance(x[0], (list, np.ndarray)):
            assert len(x) == len(y) and type(x[0]) is type(y[0]), f.name
            assert all(np.array_equal(r, s) for r, s in zip(x, y)), f.name
        else:
            assert x == y, f.name


def prepared(overrides, monkeypatch=None):
    s = prepare(load_config(None, overrides))
    s.logger.close()
    return s


@pytest.fixture
def cases(tiny_bert, sentiment_csv, tiny_llama, chat_jsonl, tiny_t5, pairs_jsonl, tmp_path):
    from tests.integration.test_dpo import pair_rows
    from tests.integration.test_multilabel import multilabel_rows

    cache = tmp_path / "cache"
    prefs, tags = tmp_path / "prefs.jsonl", tmp_path / "tags.jsonl"
    for path, rows in ((prefs, pair_rows(60)), (tags, multilabel_rows(80))):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["train.precision=fp32", "train.threads=1", f"cache_dir={cache}",
              "overwrite=true", "eval.max_samples=0"]
    return cache, {
        "multilabel": [f"model={tiny_llama}", f"data.train={tags}", "data.multi_label=true",
                       *common],
        "seq2seq": [f"model={tiny_t5}", f"data.train={pairs_jsonl}", "task=seq2seq", *common],
        "dpo_packed": [f"model={tiny_llama}", f"data.train={prefs}", "task=dpo",
                       "data.packing=true", "dpo.precompute_ref=false", "method=lora",
                       *common],
        "classify": [f"model={tiny_bert}", f"data.train={sentiment_csv}", *common],
        "sft_packed": [f"model={tiny_llama}", f"data.train={chat_jsonl}", "task=sft",
                       "data.packing=true", "train.max_length=64", *common],
        "mlm": [f"model={tiny_bert}", f"data.train={sentiment_csv}", "task=mlm", *common],
    }


@pytest.mark.parametrize("name", ["classify", "multilabel", "sft_packed", "mlm", "seq2seq",
                                  "dpo_packed"])
def test_a_second_run_reads_what_the_first_tokenized(cases, name, tmp_path, monkeypatch):
    cache, all_cases = cases
    overrides = all_cases[name] + [f"output_dir={tmp_path / 'run'}"]
    first = prepared(overrides)
    assert len(entries(cache)) == 1
    # the second run must not tokenize: its task's encode would fail
    monkeypatch.setattr(type(first.task), "encode",
                        lambda *a, **k: pytest.fail("tokenized again"))
    second = prepared(overrides)
    assert first.data.keys() == second.data.keys()
    for split in first.data:
        same(first.data[split], second.data[split])
    assert first.report == second.report


def test_changes_make_a_new_entry(cases, tmp_path, sentiment_csv, tiny_bert):
    cache, all_cases = cases
    base = all_cases["classify"] + [f"output_dir={tmp_path / 'run'}"]
    prepared(base)
    prepared(base + ["train.lr=1e-3", "train.epochs=2"])  # training settings: same entry
    assert len(entries(cache)) == 1
    prepared(base + ["train.max_length=16"])
    assert len(entries(cache)) == 2
    edited = tmp_path / "edited.csv"
    edited.write_text(sentiment_csv.read_text().replace("great", "good", 1))
    prepared([*base, f"data.train={edited}"])
    assert len(entries(cache)) == 3
    other = tmp_path / "bert2"
    shutil.copytree(tiny_bert, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["very"], vocab["music"] = vocab["music"], vocab["very"]  # other ids, same files
    (other / "tokenizer.json").write_text(json.dumps(spec))
    s = prepared([*base, f"model={other}"])
    assert len(entries(cache)) == 4
    assert encode(s.tokenizer, ["very music"], 128).input_ids[0].tolist()[1:3] == \
        encode(prepared(base).tokenizer, ["music very"], 128).input_ids[0].tolist()[1:3]


def test_a_damaged_entry_is_made_again_and_off_writes_nothing(cases, tmp_path):
    cache, all_cases = cases
    base = all_cases["classify"] + [f"output_dir={tmp_path / 'run'}"]
    first = prepared(base)
    (key,) = entries(cache)
    (cache / "data" / key / "arrays.npz").write_bytes(b"not an npz")
    assert DataCache(cache / "data", key).load() is None
    second = prepared(base)
    same(first.data["train"], second.data["train"])
    assert DataCache(cache / "data", key).load() is not None  # stored again
    shutil.rmtree(cache)
    prepared(base + ["data.cache=false"])
    assert entries(cache) == []


def test_an_entry_names_only_lmtune_classes(cases, tmp_path):
    cache, all_cases = cases
    prepared(all_cases["classify"] + [f"output_dir={tmp_path / 'run'}"])
    (key,) = entries(cache)
    meta_path = cache / "data" / key / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["splits"]["train"]["class"] = "os.system"
    meta_path.write_text(json.dumps(meta))
    assert DataCache(cache / "data", key).load() is None

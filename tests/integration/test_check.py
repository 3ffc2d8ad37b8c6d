"""`lmtune check` finds planted problems with exact counts; `--strict` fails on them; training
warns about leaks and conflicts and goes on."""
import json

import pytest

from lmtune.cli import main
from lmtune.data.checks import Rows, check_splits, normalize
from tests.conftest import write_csv

SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2"


def planted(tmp_path):
    """Train, validation and test CSVs of distinct rows, then the planted problems."""
    rows = [{"text": f"review number {i} of the film was {w}", "label": "pos" if i % 2 else "neg"}
            for i, w in enumerate(["fine", "good", "dull", "weak"] * 30)]
    train, val, test = rows[:80], rows[80:100], rows[100:]
    train += [dict(train[3]), dict(train[5])]  # 2 exact duplicates (train lines 85, 86)
    train.append({"text": train[7]["text"].upper() + "!!", "label": train[7]["label"]})  # near
    train.append({"text": train[9]["text"], "label": "pos" if train[9]["label"] == "neg"
                  else "neg"})  # the same text, the other label: a conflict (and a dup)
    test += [{"text": "  " + train[11]["text"].title() + ".", "label": train[11]["label"]},
             {"text": train[12]["text"].replace(" ", "   "), "label": train[12]["label"]}]
    val.append({"text": f"my key is {SECRET} please keep it", "label": "pos"})
    val.append({"text": "mail me at jane.doe@example.org or +44 20 7946 0958", "label": "neg"})
    return [write_csv(tmp_path / f"{n}.csv", r) for n, r in
            (("train", train), ("val", val), ("test", test))]


def test_normalization_ignores_case_space_punctuation_and_unicode_form():
    assert normalize("  Great\tFILM!! ") == normalize("great film") == "great film"
    assert normalize("ﬁne ＡＢＣ") == "fine abc"  # NFKC: ligature and full-width letters


def test_check_finds_each_planted_problem_with_exact_counts(tmp_path, tiny_bert, capsys):
    train, val, test = planted(tmp_path)
    out = tmp_path / "findings.json"
    args = ["check", f"model={tiny_bert}", f"data.train={train}", f"data.validation={val}",
            f"data.test={test}", "--json", str(out)]
    assert main(args) == 0  # findings alone do not fail the command
    f = json.loads(out.read_text())
    dup = f["duplicates"]["train"]
    assert dup["exact"]["count"] == 3  # two copies, and the conflicting copy's text
    assert dup["near"]["count"] == 1
    assert f["train_test_overlap"]["test"]["count"] == 2
    assert f["train_test_overlap"]["validation"]["count"] == 0
    assert f["label_conflicts"]["count"] == 1
    assert f["secrets"]["OpenAI key"]["count"] == 1
    assert SECRET not in out.read_text() and SECRET not in capsys.readouterr().out
    assert f["pii"]["e-mail address"]["count"] == 1 and f["pii"]["phone number"]["count"] == 1
    assert f["truncated_share"]["train"] == 0 and f["tokens"]["train"]["rows"] == 84
    assert "val.csv:22" in f["secrets"]["OpenAI key"]["examples"][0]  # file:line
    assert main([*args[:-2], "--strict"]) == 1
    err = capsys.readouterr().err
    assert "2 test row(s) also appear" in err and "1 text(s) carry more than one label" in err


def test_strict_passes_clean_data(tmp_path, tiny_bert):
    rows = [{"text": f"review number {i} was {'good' if i % 2 else 'bad'}",
             "label": "pos" if i % 2 else "neg"} for i in range(60)]
    data = write_csv(tmp_path / "clean.csv", rows)
    assert main(["check", f"model={tiny_bert}", f"data.train={data}", "--strict",
                 "--no-tokens"]) == 0
    rows = Rows(["a good film", "a bad film"], ["f:2", "f:3"], ["pos", "neg"])
    f = check_splits({"train": rows, "test": Rows(["another one"], ["g:2"], ["pos"])})
    assert f["train_test_overlap"]["test"]["count"] == 0 and f["label_conflicts"]["count"] == 0
    assert f["secrets"] == {} and f["duplicates"]["train"]["exact"]["count"] == 0


def test_training_warns_about_leaks_and_conflicts_and_goes_on(tmp_path, tiny_bert, capsys):
    train, val, test = planted(tmp_path)
    assert main(["train", "--quiet", f"model={tiny_bert}", f"data.train={train}",
                 f"data.validation={val}", f"data.test={test}", "train.max_steps=2",
                 "train.threads=1", "train.precision=fp32",
                 f"output_dir={tmp_path / 'run'}"]) == 0
    err = capsys.readouterr().err
    assert "warning: 2 test row(s) also appear in an earlier split" in err
    assert "warning: 1 text(s) carry more than one label" in err


@pytest.mark.parametrize("task,extra", [("sft", []), ("dpo", [])])
def test_check_reads_chat_and_preference_data(tmp_path, tiny_llama, chat_jsonl, task, extra):
    if task == "dpo":
        from tests.integration.test_dpo import pair_rows, write_jsonl

        data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(60) + pair_rows(5))
    else:
        data = chat_jsonl
    out = tmp_path / "f.json"
    assert main(["check", f"task={task}", f"model={tiny_llama}", f"data.train={data}",
                 "train.max_length=64", "--json", str(out), *extra]) == 0
    f = json.loads(out.read_text())
    assert set(f["rows"]) == {"train", "validation", "test"}
    assert 0 <= f["truncated_share"]["train"] <= 1 and f["tokens"]["train"]["max"] > 0
    if task == "dpo":  # the 5 repeated pairs land in one split or leak into another
        repeats = sum(d["exact"]["count"] for d in f["duplicates"].values()) + sum(
            o["count"] for o in f["train_test_overlap"].values())
        assert repeats == 5


def test_the_share_of_answers_cut_follows_the_truncation_rule(tmp_path, tiny_llama, chat_jsonl):
    share = {}
    for rule in ("end", "prompt_middle"):
        out = tmp_path / f"{rule}.json"
        assert main(["check", "task=sft", f"model={tiny_llama}", f"data.train={chat_jsonl}",
                     "train.max_length=32", f"data.truncation={rule}", "--json",
                     str(out)]) == 0
        f = json.loads(out.read_text())
        share[rule] = f["trained_cut_share"]["train"]
        assert f["truncated_share"]["train"] > 0.3  # the same rows are cut either way
    assert share["end"] > 0.3 and share["prompt_middle"] < share["end"] / 2

"""Preference pairs: both formats become the same pair, bad rows name their line, prompt and
completion are tokenized apart, truncation keeps the answers."""
import json

import pytest

from lmtune.config import load_config
from lmtune.data.formats import Message
from lmtune.data.preference import (Pair, completion_text, detect_preference_format,
                                    encode_pairs, fit_pair, load_pairs, pairs)
from lmtune.data.readers import read_path
from lmtune.errors import LmtuneError

WANT = Pair([Message("system", "Be brief."), Message("user", "repeat: the cat")],
            "the cat", "cat the")
ROWS = {
    "preference": {"prompt": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "repeat: the cat"}],
                   "chosen": [{"role": "assistant", "content": "the cat"}],
                   "rejected": "cat the"},
    "openai_preference": {"input": {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "repeat: the cat"}]},
        "preferred_output": [{"role": "assistant", "content": "the cat"}],
        "non_preferred_output": [{"role": "assistant", "content": "cat the"}]},
}


def jsonl(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", list(ROWS))
def test_both_formats_become_the_same_pair(tmp_path, fmt):
    table = read_path(jsonl(tmp_path, [ROWS[fmt]]))
    assert detect_preference_format(table) == fmt
    assert pairs(table, fmt) == [WANT]


def test_a_string_prompt_is_a_user_turn(tmp_path):
    table = read_path(jsonl(tmp_path, [{"prompt": "hi", "chosen": "a", "rejected": "b"}]))
    assert pairs(table, "preference") == [Pair([Message("user", "hi")], "a", "b")]


@pytest.mark.parametrize("row,message", [
    ({"prompt": "hi", "chosen": "a"}, "'rejected' must be a string .* got missing"),
    ({"prompt": "hi", "chosen": "a", "rejected": 3}, "'rejected' must be a string"),
    ({"prompt": "hi", "chosen": "a", "rejected": " "}, "'rejected' is empty"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "'prompt' is empty"),
    ({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
      "chosen": "a", "rejected": "b"}, "ends with an assistant turn"),
    ({"prompt": "hi", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     "one assistant message"),
    ({"input": [], "preferred_output": [], "non_preferred_output": []}, "'input' must be"),
])
def test_a_bad_row_names_its_file_and_line(tmp_path, row, message):
    good = {"prompt": "hi", "chosen": "a", "rejected": "b"}
    path = jsonl(tmp_path, [good, row] if "input" not in row else [row, row])
    line = 2 if "input" not in row else 1
    with pytest.raises(LmtuneError, match=message) as e:
        table = read_path(path)
        pairs(table, detect_preference_format(table))
    assert f"pairs.jsonl:{line}" in str(e.value)


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def cfg(path, *extra):
    return load_config(None, ["task=dpo", f"data.train={path}", "train.min_steps=0", *extra])


def test_prompt_and_completions_are_tokenized_apart(tok, tmp_path):
    pair = Pair([Message("user", "repeat: the cat")], "the cat", "a dog sat")
    enc, report = encode_pairs([pair], ["x:1"], cfg(tmp_path), tok, train=True)
    prompt_text, chosen_text = completion_text(tok, pair.prompt, pair.chosen)
    assert chosen_text == "the cat<|endoftext|>"  # through the end-of-turn token, no further
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    p = enc.prompt_lengths[0]
    assert list(enc.input_ids[0][:p]) == list(enc.rejected_ids[0][:p]) == ids(prompt_text)
    assert list(enc.input_ids[0][p:]) == ids(chosen_text)
    assert list(enc.rejected_ids[0][p:]) == ids(completion_text(tok, pair.prompt,
                                                                pair.rejected)[1])
    assert report.trained_tokens == len(enc.input_ids[0]) + len(enc.rejected_ids[0]) - 2 * p


def test_truncation_cuts_the_prompt_middle_first_and_keeps_it_shared():
    p, c, r = list(range(100, 140)), [1, 2, 3], [4, 5, 6, 7, 8]
    p2, c2, r2, cut = fit_pair(p, c, r, 20, "prompt_middle")
    assert cut and c2 == c and r2 == r and len(p2) == 15
    assert p2[:7] == p[:7] and p2[-8:] == p[-8:]  # both ends of the prompt stay
    p3, c3, r3, _ = fit_pair(p, c, r, 42, "end")
    assert p3 == p and c3 == [1, 2] and r3 == [4, 5]
    assert fit_pair(p, c, r, 64, "end") == (p, c, r, False)


def test_a_pair_left_without_an_answer_stops_the_run_or_is_dropped(tok, tmp_path):
    long = "repeat: " + " ".join(["the cat sat on the mat"] * 20)
    items = [Pair([Message("user", "hi")], "a", "b"), Pair([Message("user", long)], "x", "y")]
    where = ["pairs.jsonl:1", "pairs.jsonl:2"]
    with pytest.raises(LmtuneError, match="pairs.jsonl:2: the prompt leaves no room"):
        encode_pairs(items, where, cfg(tmp_path, "train.max_length=32",
                                       "data.truncation=end"), tok, train=True)
    enc, report = encode_pairs(items, where, cfg(tmp_path, "train.max_length=32",
                                                 "data.truncation=end",
                                                 "data.drop_unlearnable=true"), tok, True)
    assert len(enc) == 1 and report.dropped == 1
    enc, report = encode_pairs(items, where, cfg(tmp_path, "train.max_length=32"), tok, True)
    assert len(enc) == 2 and report.truncated == 1  # prompt_middle keeps the answers


def test_pairs_with_the_same_answer_twice_are_dropped_with_a_note(tok, tmp_path):
    items = [Pair([Message("user", "hi")], "a", "b"), Pair([Message("user", "hi")], "a", "a")]
    enc, report = encode_pairs(items, ["f:1", "f:2"], cfg(tmp_path), tok, train=True)
    assert len(enc) == 1 and "1 pair(s)" in report.note


def test_splits_are_carved_from_train_and_a_test_file_is_read_alone(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(50)]
    path = jsonl(tmp_path, rows)
    splits = load_pairs(cfg(path))
    assert {k: len(v) for k, v in splits.items.items()} == {"train": 40, "validation": 5,
                                                            "test": 5}
    test = jsonl(tmp_path, [ROWS["openai_preference"]], "test.jsonl")
    alone = load_pairs(cfg(path, f"data.test={test}", "data.format=openai_preference"),
                       test_only=True)
    assert alone.items == {"test": [WANT]} and alone.where["test"][0].endswith("test.jsonl:1")


def test_a_prompt_ending_in_a_space_keeps_its_tokens_whatever_the_answer(tok, tmp_path):
    """TRL#2054: a template whose generation prompt ends with a space. Tokenized as one
    text, the space merges into the answer's first word (" the"), so the prompt's tokens
    would differ between the two answers and from the prompt alone. Tokenized apart, they
    are the same."""
    import copy

    spaced = copy.deepcopy(tok)
    spaced.chat_template = tok.chat_template.replace("### Assistant:\n", "### Assistant: ")
    pair = Pair([Message("user", "repeat: the cat")], "the cat", "cat the")
    prompt_text, chosen_text = completion_text(spaced, pair.prompt, pair.chosen)
    assert prompt_text.endswith(" ")
    ids = lambda t: spaced(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    joined = ids(prompt_text + chosen_text)
    assert joined[:len(ids(prompt_text))] != ids(prompt_text)  # the trap is real here
    enc, _ = encode_pairs([pair], ["x:1"], cfg(tmp_path), spaced, train=True)
    p = enc.prompt_lengths[0]
    assert list(enc.input_ids[0][:p]) == list(enc.rejected_ids[0][:p]) == ids(prompt_text)

"""Chat formats → one conversation; loss masks from the chat template; best-fit packing."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtune.data.formats import Message, conversations, detect_format
from lmtune.data.packing import best_fit
from lmtune.data.readers import from_lists, read_path
from lmtune.data.templates import tokenize_conversation
from lmtune.errors import LmtuneError

WANT = [Message("user", "repeat: the cat"), Message("assistant", "the cat")]
ROWS = {
    "chat": {"messages": [{"role": "user", "content": "repeat: the cat"},
                          {"role": "assistant", "content": "the cat"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "repeat: the cat"},
                                   {"from": "gpt", "value": "the cat"}]},
    "alpaca": {"instruction": "repeat: the cat", "input": "", "output": "the cat"},
    "prompt_completion": {"prompt": "repeat: the cat", "completion": "the cat"},
}


def jsonl(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_path(path)


@pytest.mark.parametrize("fmt", list(ROWS))
def test_every_format_becomes_the_same_conversation(tmp_path, fmt):
    table = jsonl(tmp_path, [ROWS[fmt]])
    assert detect_format(table, "text") == fmt
    assert conversations(table, fmt) == [WANT]


def test_alpaca_input_joins_the_instruction(tmp_path):
    table = jsonl(tmp_path, [{"instruction": "Summarize.", "input": "A long text.",
                              "output": "Short."}])
    assert conversations(table, "alpaca")[0][0] == Message("user", "Summarize.\n\nA long text.")


@pytest.mark.parametrize("fmt,row,message", [
    ("chat", {"messages": [{"role": "wizard", "content": "hi"}]},
     "data.jsonl:2: messages[0]: bad role 'wizard'"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}]},
     "data.jsonl:2: no assistant turn"),
    ("chat", {"messages": [{"role": "user", "content": ["a", "b"]},
                           {"role": "assistant", "content": "x"}]},
     "data.jsonl:2: messages[0].content must be a string, got a list"),
    ("chat", {"messages": "hello"}, "data.jsonl:2: 'messages' must be a non-empty list"),
    ("sharegpt", {"conversations": [{"from": "alien", "value": "x"}]},
     "data.jsonl:2: conversations[0]: bad role 'alien'"),
    ("alpaca", {"instruction": "x", "output": 3},
     "data.jsonl:2: 'output' must be a string, got a int"),
    ("sharegpt", {"conversations": [{"from": [], "value": "x"}]},  # found by the fuzzer
     "data.jsonl:2: conversations[0]: bad role []"),
])
def test_bad_rows_name_the_line(tmp_path, fmt, row, message):
    table = jsonl(tmp_path, [ROWS[fmt], row])  # line 1 is fine, line 2 is not
    assert detect_format(table, "text") == fmt
    with pytest.raises(LmtuneError) as e:
        conversations(table, fmt)
    assert message in str(e.value)


def test_a_cut_off_line_names_its_line(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(ROWS["chat"]) + "\n" + '{"messages": [{"role": "us')
    with pytest.raises(LmtuneError, match="cut.jsonl:2"):
        read_path(path)


def test_unknown_columns_list_the_formats():
    with pytest.raises(LmtuneError, match="cannot tell the data format.*messages \\(chat\\)"):
        detect_format(from_lists({"foo": ["x"]}), "text")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(
    ["messages", "conversations", "instruction", "input", "output", "prompt", "completion",
     "text", "role", "content"]),
    st.recursive(st.none() | st.text(max_size=5) | st.integers(),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(
                     st.sampled_from(["role", "content", "from", "value"]), c, max_size=3),
                 max_leaves=8), max_size=4), min_size=1, max_size=4))
def test_fuzzed_rows_give_conversations_or_a_clean_error(rows):
    columns = sorted({k for r in rows for k in r})
    table = from_lists({c: [r.get(c) for r in rows] for c in columns}) if columns else None
    if table is None:
        return
    try:
        fmt = detect_format(table, "text")
        if fmt != "text":
            for conv in conversations(table, fmt):
                assert all(isinstance(m.content, str) for m in conv)
                assert any(m.role == "assistant" for m in conv)
    except LmtuneError:
        pass


# ------------------------------------------------------------------------------ masks


def trained_text(tok, t):
    return tok.decode([i for i, m in zip(t.input_ids, t.trained) if m])


CONV = [Message("system", "be brief"), Message("user", "repeat: the cat"),
        Message("assistant", "the cat"), Message("user", "repeat: a dog"),
        Message("assistant", "a dog")]


@pytest.fixture(scope="module")
def tiny_tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def test_labels_cover_exactly_the_assistant_contents_and_end_of_turn(tiny_tok):
    t = tokenize_conversation(tiny_tok, CONV, "assistant", 256)
    assert trained_text(tiny_tok, t) == "the cat<|endoftext|>a dog<|endoftext|>"
    last = tokenize_conversation(tiny_tok, CONV, "last_assistant", 256)
    assert trained_text(tiny_tok, last) == "a dog<|endoftext|>"
    every = tokenize_conversation(tiny_tok, CONV, "all", 256)
    assert all(every.trained) and tiny_tok.decode(every.input_ids) == \
        tiny_tok.apply_chat_template([m.__dict__ for m in CONV], tokenize=False)


def test_truncation_is_reported(tiny_tok):
    t = tokenize_conversation(tiny_tok, CONV, "assistant", 10)
    assert t.truncated and len(t.input_ids) == 10 and not any(t.trained)


# ---------------------------------------------------------------------------- packing


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=60))
def test_best_fit_places_every_sample_once_within_capacity(lengths):
    bins = best_fit(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    # a bin is opened only when the sample fits in no open bin, so no two bins could merge
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert all(a + b > 64 for i, a in enumerate(loads) for b in loads[i + 1:])

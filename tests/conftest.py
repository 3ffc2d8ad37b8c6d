"""Shared fixtures: a tiny random BERT (2 layers, hidden 32) saved as a local HF model dir,
and a small synthetic sentiment dataset. Nothing is downloaded."""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest
import torch


def _pin_xdist_worker() -> None:
    """Under `pytest -n N` (pytest-xdist), worker gwK keeps to core K mod the cores: two
    workers sharing both cores slow each other's matmuls badly, while one worker per core runs
    at full speed. The subprocesses a test starts (`lmtune train`, 2-process DDP) inherit the
    pin, and `default_threads()` then gives them one thread."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})


_pin_xdist_worker()
torch.set_num_threads(1)  # a busy second core slows tiny matmuls badly; keep tests steady

POSITIVE = ["good", "great", "superb", "lovely", "moving", "brilliant", "fun", "smart"]
NEGATIVE = ["bad", "awful", "dull", "boring", "poor", "weak", "messy", "tedious"]
FILLER = ["the", "film", "movie", "was", "a", "plot", "actors", "story", "really", "quite",
          "and", "its", "script", "ending", "music", "very"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Rows whose label is decided by one sentiment word among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, rng.randint(3, 9))
        words.insert(rng.randrange(len(words) + 1),
                     rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def save_tiny_bert(d: Path, dropout: float = 0.0) -> Path:
    """A random 2-layer BERT classifier base with a word-level vocab, as a local model dir."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = SPECIALS + POSITIVE + NEGATIVE + FILLER
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    assert tok("great film")["input_ids"] == [2, words.index("great"), words.index("film"), 3]
    config = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """Without dropout, so that runs compare exactly across batch layouts."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_bert_dropout(tmp_path_factory) -> Path:
    """With dropout: training draws from the RNG, as real runs do (for resume tests)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-dropout"), dropout=0.1)


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "reviews.csv", sentiment_rows(240))


@pytest.fixture
def tiny_overrides(tiny_bert, sentiment_csv, tmp_path) -> list[str]:
    """Overrides for a fast, deterministic fp32 run of the tiny model."""
    return [f"model={tiny_bert}", f"data.train={sentiment_csv}",
            f"output_dir={tmp_path / 'run'}", "train.threads=1", "train.precision=fp32",
            "train.batch_size=16", "train.lr=3e-3", "train.epochs=4", "train.warmup=0",
            "train.log_every=1", "train.min_steps=0"]  # the epochs decide


# A tiny chat template unlike ChatML: other markers, and <|endoftext|> ends each assistant
# turn. Masking must find turns from the template alone, whatever it looks like.
TINY_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}\n"
    "{% elif m.role == 'user' %}### User:\n{{ m.content }}\n"
    "{% else %}### Assistant:\n{{ m.content }}<|endoftext|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}")
CHAT_WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "to", "park", "what", "did",
              "say", "hello", "world", "summarize", "translate", "this", "a", "short", "text"]


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    """Chat rows whose answer is a fixed function of the question: learnable by a tiny LM."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(CHAT_WORDS, rng.randint(2, 6))
        rows.append({"messages": [
            {"role": "user", "content": "repeat: " + " ".join(words)},
            {"role": "assistant", "content": " ".join(words)}]})
    return rows


def byte_level_bpe(specials: list[str], extra: str):
    """A 300-token byte-level BPE `tokenizers.Tokenizer` trained here on CHAT_WORDS + `extra`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(CHAT_WORDS), extra] * 20, trainer)
    return tok


def save_tiny_llama(d: Path, **sizes) -> Path:
    """A random 2-layer Llama with a byte-level BPE tokenizer trained here and TINY_TEMPLATE;
    `sizes` override its config (a wider model)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = byte_level_bpe(["<|endoftext|>"], "### User:\n### Assistant:\nrepeat: ")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = TINY_TEMPLATE
    config = LlamaConfig(**{**dict(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id, bos_token_id=None), **sizes})
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(d)
    fast.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def chat_jsonl(tmp_path_factory) -> Path:
    import json

    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(160)))
    return path


def seq2seq_tokenizer(bos: bool):
    """A byte-level BPE tokenizer over CHAT_WORDS with <pad>, </s> and (for BART) <s>: each
    encoded text gets `</s>` (T5 style) or `<s> … </s>` (BART style)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<s>"]
    tok = byte_level_bpe(specials, "repeat: ")
    ids = {t: tok.token_to_id(t) for t in specials}
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>" if bos else "$A </s>",
        special_tokens=[(t, ids[t]) for t in (("<s>", "</s>") if bos else ("</s>",))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   bos_token="<s>")


def save_tiny_seq2seq(d: Path, kind: str) -> Path:
    """A random 2-layer T5 or BART (hidden 32) with its tokenizer, as a local model dir."""
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, \
        T5ForConditionalGeneration

    tok = seq2seq_tokenizer(bos=kind == "bart")
    pad, eos, bos = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    torch.manual_seed(0)
    if kind == "t5":
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad))
    else:
        model = BartForConditionalGeneration(BartConfig(
            vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
            decoder_ffn_dim=64, max_position_embeddings=128, pad_token_id=pad,
            bos_token_id=bos, eos_token_id=eos, decoder_start_token_id=eos,
            forced_bos_token_id=None, dropout=0.0))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    return save_tiny_seq2seq(tmp_path_factory.mktemp("tiny-t5"), "t5")


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory) -> Path:
    return save_tiny_seq2seq(tmp_path_factory.mktemp("tiny-bart"), "bart")


@pytest.fixture(scope="session")
def tiny_bert2bert(tiny_bert, tmp_path_factory) -> Path:
    """The minilm2minilm recipe applied to the tiny BERT."""
    from lmtune.models.load import build_bert2bert

    d = tmp_path_factory.mktemp("tiny-bert2bert")
    build_bert2bert(tiny_bert, d)
    return d


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """source/target rows: the target repeats the source's words (learnable by tiny models;
    the words are in both the BPE and the tiny BERT vocabularies where they overlap)."""
    return [{"source": r["messages"][0]["content"], "target": r["messages"][1]["content"]}
            for r in chat_rows(n, seed)]


@pytest.fixture(scope="session")
def pairs_jsonl(tmp_path_factory) -> Path:
    import json

    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pair_rows(160)))
    return path


def metric_rows(run_dir: Path) -> list[dict]:
    import json

    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_tracked(cfg):
    """Train `cfg` in process: (setup, result, test metrics before training, names of the
    trainable tensors that training left unchanged)."""
    from lmtune.prepare import prepare
    from lmtune.train import evaluate_split, finish, fit

    s = prepare(cfg)
    model = s.module
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    base = evaluate_split(s, "test")
    result = finish(s, fit(s, progress=False))
    unchanged = {n for n, p in model.named_parameters() if n in before and
                 torch.equal(p, before[n])}
    return s, result, base, unchanged

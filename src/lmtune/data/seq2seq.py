"""Conversations → encoder inputs + decoder targets, for encoder-decoder models (seq2seq).

    source  every turn before the last assistant turn, joined by blank lines
            (alpaca: instruction + input; source_target: the source column)
    target  the last assistant turn

    encoder  input_ids    [CLS] the source … [SEP]          (the tokenizer's own specials)
    decoder  decoder_ids  <start> t1 t2 … t(n-1)             the targets shifted right
             targets      t1    t2 t3 … <eos>                every one carries the loss

`<start>` is the model's `decoder_start_token_id` (T5: pad, BART: </s>, bert2bert: [CLS]).
A target that the tokenizer itself starts with that token (BERT's [CLS]) loses it, so the
model never spends a step predicting the token it was given.
"""
from __future__ import annotations

from lmtune.data.collate import Encoded
from lmtune.data.formats import Conversation
from lmtune.data.templates import special_wrap
from lmtune.errors import LmtuneError


def source_text(conv: Conversation) -> str:
    """The encoder's input: the turns before the last assistant turn (or all turns)."""
    last = max((i for i, m in enumerate(conv) if m.role == "assistant"), default=len(conv))
    return "\n\n".join(m.content for m in conv[:last])


def target_text(conv: Conversation) -> str:
    return next(m.content for m in reversed(conv) if m.role == "assistant")


def source_ids(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]],
                                                                       list[bool]]:
    """Encoder inputs cut to `max_length` with the tokenizer's own special tokens kept
    around them, and whether each was cut; training and generation both encode this way."""
    prefix, suffix = special_wrap(tokenizer)
    room = max_length - len(prefix) - len(suffix)
    bodies = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return [prefix + b[:room] + suffix for b in bodies], [len(b) > room for b in bodies]


def encode_seq2seq(tokenizer, items: list[Conversation], where: list[str], max_length: int,
                   decoder_start: int, report) -> Encoded:
    """Tokenize (source, target) pairs; both sides are truncated to `max_length` tokens."""
    sources, cut = source_ids(tokenizer, [source_text(c) for c in items], max_length)
    full = tokenizer(text_target=[target_text(c) for c in items])["input_ids"]
    targets, decoder_ids = [], []
    for src, src_cut, tgt, loc in zip(sources, cut, full, where):
        if tgt and tgt[0] == decoder_start:
            tgt = tgt[1:]
        if not tgt:
            raise LmtuneError(f"{loc}: the target is empty after tokenization")
        report.truncated += len(tgt) > max_length or src_cut
        tgt = tgt[:max_length]
        targets.append(tgt)
        decoder_ids.append([decoder_start] + tgt[:-1])
        report.samples += 1
        report.tokens += len(src) + len(tgt)
        report.trained_tokens += len(tgt)
        for role, n in (("source", len(src)), ("target", len(tgt))):
            report.role_tokens[role] = report.role_tokens.get(role, 0) + n
    enc = Encoded(sources, targets=targets, decoder_ids=decoder_ids)
    enc.units = [len(t) for t in targets]
    return enc

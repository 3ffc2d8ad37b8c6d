"""Conversations → tokens + loss mask, through the tokenizer's own chat template.

The conversation is rendered once as text by the template, and each assistant turn's
character span is found by rendering the prefix before it (with the generation prompt) and
the prefix through it. The whole text is tokenized once. For ChatML (SmolLM2):

    <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n
    ─────────────── prompt, with the generation prompt ──────── ───trained─────── ✗

A token is trained when it overlaps a trained span. The span ends with the first special
token after the content (the end-of-turn token: <|im_end|>, <|eot_id|>, </s>...), so the
model learns to stop; the newline the template writes after it is not trained. Generation renders the prompt with the same
template and `add_generation_prompt=True`, so training and inference cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lmtune.data.formats import Conversation, Message
from lmtune.errors import LmtuneError

TRAIN_ON = ("assistant", "last_assistant", "all")


@dataclass
class Tokenized:
    """One sample: token ids, which of them are trained, and tokens per role."""

    input_ids: list[int]
    trained: list[bool]
    role_tokens: dict[str, int] = field(default_factory=dict)
    truncated: bool = False
    trained_cut: bool = False  # the cut took trained tokens (part of an answer) too


def render(tokenizer, messages: Conversation, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template([{"role": m.role, "content": m.content}
                                          for m in messages], tokenize=False,
                                         add_generation_prompt=generation_prompt)


def check_template(tokenizer, model: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise LmtuneError(f"model {model}: its tokenizer has no chat template; use a chat "
                          "model (e.g. smollm2) or task=clm for plain text")
    if not getattr(tokenizer, "is_fast", False):
        raise LmtuneError(f"model {model}: needs a fast tokenizer (character offsets map "
                          "the loss mask onto tokens)")


def spans(tokenizer, conv: Conversation, train_on: str) -> tuple[str, list[tuple]]:
    """The rendered text, and (start, end, role, trained) character spans of every turn."""
    text = render(tokenizer, conv)
    out, last = [], max(i for i, m in enumerate(conv) if m.role == "assistant")
    for i, m in enumerate(conv):
        before = render(tokenizer, conv[:i], generation_prompt=m.role == "assistant") \
            if i else ""
        through = render(tokenizer, conv[:i + 1])
        if not (text.startswith(before) and text.startswith(through)):
            raise LmtuneError("the chat template renders a conversation differently from "
                              "its prefixes (it rewrites earlier turns), so turns cannot be "
                              "masked; use another template or train_on=all")
        start, end = len(before), len(through)
        if m.role == "assistant":
            end = end_of_turn(tokenizer, text, start, end, m)
        trained = train_on == "all" or (m.role == "assistant" and (
            train_on == "assistant" or i == last))
        out.append((start, end, m.role, trained))
    return text, out


def end_of_turn(tokenizer, text: str, start: int, end: int, m: Message) -> int:
    """End of the first special token after the content: the end-of-turn marker."""
    content_at = text.find(m.content, start, end) if m.content else -1
    search_from = content_at + len(m.content) if content_at >= 0 else start
    hits = [(text.find(tok, search_from, end), tok) for tok in tokenizer.all_special_tokens]
    hits = [(at, tok) for at, tok in hits if at >= 0]
    if not hits:
        return end
    at, tok = min(hits)
    return at + len(tok)


def tokenize_conversation(tokenizer, conv: Conversation, train_on: str,
                          max_length: int, truncation: str = "end") -> Tokenized:
    text, turn_spans = spans(tokenizer, conv, train_on)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    trained, roles = [], {}
    for (a, b) in offsets:
        role, train = "template", train_on == "all"
        for start, end, r, t in turn_spans:
            # Overlap, not containment: a token that merges the prompt's last character
            # with the answer's first still carries part of the answer.
            if a < end and max(b, a + 1) > start:
                role, train = r, t or train
                break
        trained.append(train)
        roles[role] = roles.get(role, 0) + 1
    truncated = len(ids) > max_length
    before = sum(trained)
    if truncated and truncation == "prompt_middle":
        ids, trained = cut_prompt_middle(ids, trained, max_length)
    ids, trained = ids[:max_length], trained[:max_length]
    return Tokenized(ids, trained, roles, truncated, sum(trained) < before)


def cut_prompt_middle(ids: list[int], trained: list[bool], max_length: int
                      ) -> tuple[list[int], list[bool]]:
    """Make room by dropping tokens from the middle of the prompt (everything before the
    first trained token), so that a long prompt costs prompt tokens, not the answer:

        [system, start of the question]  ···dropped···  [end of the question, header] answer

    Both ends of the prompt stay: the template's opening and the instruction, and the
    turn's last words and the assistant header the answer follows. What the prompt cannot
    give is then cut from the end, as `end` truncation does."""
    first = next((i for i, t in enumerate(trained) if t), len(ids))
    drop = min(len(ids) - max_length, max(first - 2, 0))  # keep a token at each end
    head = (first - drop) // 2
    return ids[:head] + ids[head + drop:], trained[:head] + trained[head + drop:]


def tokenize_text(tokenizer, text: str, max_length: int, add_eos: bool) -> list[Tokenized]:
    """A plain text, all of it trained, cut into `max_length` pieces (nothing is dropped).

    Causal LM adds EOS so documents end; MLM adds the tokenizer's own [CLS]/[SEP] per piece.
    """
    if add_eos:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        pieces = [ids[s:s + max_length] for s in range(0, len(ids), max_length)]
    else:
        prefix, suffix = special_wrap(tokenizer)
        room = max_length - len(prefix) - len(suffix)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = [prefix + ids[s:s + room] + suffix for s in range(0, max(len(ids), 1), room)]
    return [Tokenized(p, [True] * len(p), {"text": len(p)}) for p in pieces if len(p) > 1]


def special_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one text ([CLS] … [SEP])."""
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    outer = tokenizer("a", add_special_tokens=True)["input_ids"]
    for at in range(len(outer) - len(inner) + 1):
        if outer[at:at + len(inner)] == inner:
            return outer[:at], outer[at + len(inner):]
    return [], []


def end_of_turn_ids(tokenizer) -> set[int]:
    """EOS plus the token that closes an assistant turn in the chat template (they differ
    for many chat models: a model that stops only at EOS would run past its turn)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    if getattr(tokenizer, "chat_template", None):
        conv = [Message("user", "hi"), Message("assistant", "ok")]
        text = render(tokenizer, conv)
        start = len(render(tokenizer, conv[:1], generation_prompt=True))
        end = end_of_turn(tokenizer, text, start, len(text), conv[1])
        tail = text[start:end]
        for tok in tokenizer.all_special_tokens:
            if tail.endswith(tok):
                ids.add(tokenizer.convert_tokens_to_ids(tok))
    return ids

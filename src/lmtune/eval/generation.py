"""Batched, KV-cached generation from a loaded model: decoder-only or encoder-decoder.

    chat     the prompt is rendered by the tokenizer's chat template with the generation
             prompt, exactly as training rendered it before the assistant's answer; new
             tokens follow the prompt, so prompts are padded on the left
    text     the turns joined by blank lines (a plain causal LM)
    seq2seq  the source text goes to the encoder (padded on the right); the decoder starts
             from the model's decoder start token

Decoding stops at EOS *and* at the template's end-of-turn token (they differ for many chat
models), or at a stop string. Used by `lmtune generate`/`eval` and by validation during
training, so what training measures is what inference does.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from lmtune import dist
from lmtune.config import Config, GenerateConfig
from lmtune.data.formats import Conversation, Message
from lmtune.data.seq2seq import source_ids, source_text, target_text
from lmtune.data.templates import end_of_turn_ids, render
from lmtune.eval.metrics import generation_metrics


def decode_kind(task: str, tokenizer) -> str:
    """How prompts are built for a model trained on `task` (see the module docstring)."""
    if task == "seq2seq":
        return "seq2seq"
    return "chat" if getattr(tokenizer, "chat_template", None) and task != "clm" else "text"


class Decoder:
    def __init__(self, model, tokenizer, kind: str, settings: GenerateConfig | None = None,
                 precision: str = "fp32", max_source_length: int = 512):
        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        self.settings = settings or GenerateConfig()
        self.precision = precision
        self.max_source_length = max_source_length
        self.stop_ids = sorted(end_of_turn_ids(tokenizer) | _config_eos(model))

    @property
    def chat(self) -> bool:
        return self.kind == "chat"

    def prompt_text(self, conv: Conversation) -> str:
        """The prompt for `conv` without its final assistant turn (the reference)."""
        if self.kind == "seq2seq":
            return source_text(conv)
        if conv and conv[-1].role == "assistant":
            conv = conv[:-1]
        if self.chat:
            return render(self.tokenizer, conv, generation_prompt=True)
        return "\n\n".join(m.content for m in conv)

    def generate(self, convs: list[Conversation], settings: GenerateConfig | None = None,
                 progress: bool = False, synced: bool = False) -> list[str]:
        """Generated answers, in input order; prompts are batched by length. `synced`: the
        ranks of a multi-process run each generate their own prompts, with as many calls,
        and every rank runs forward passes until all have finished (HF `synced_gpus`: FSDP
        and ZeRO-3 forwards are collectives)."""
        g = settings or self.settings
        prompts = [self.prompt_text(c) for c in convs]
        if self.kind == "seq2seq":
            ids = source_ids(self.tokenizer, prompts, self.max_source_length)[0]
        else:
            ids = self.tokenizer(prompts, add_special_tokens=not self.chat)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[str] = [""] * len(ids)
        bar = tqdm(total=len(ids), desc="generate", unit="prompt", disable=not progress)
        was_training = self.model.training
        self.model.eval()
        try:
            for s in range(0, len(order), g.batch_size):
                idx = order[s:s + g.batch_size]
                for i, text in zip(idx, self._batch([ids[i] for i in idx], g, synced)):
                    out[i] = text
                bar.update(len(idx))
        finally:
            self.model.train(was_training)
            bar.close()
        return out

    def _batch(self, rows: list[list[int]], g: GenerateConfig, synced: bool = False
               ) -> list[str]:
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.stop_ids[0]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        left = self.kind != "seq2seq"  # decoder-only: new tokens follow every prompt directly
        for b, r in enumerate(rows):
            at = slice(width - len(r), width) if left else slice(0, len(r))
            input_ids[b, at] = torch.tensor(r)
            attention[b, at] = 1
        device = next(self.model.parameters()).device
        kwargs = dict(max_new_tokens=g.max_new_tokens, eos_token_id=self.stop_ids,
                      pad_token_id=pad, do_sample=g.temperature > 0)
        if g.temperature > 0:
            kwargs.update(temperature=g.temperature, top_p=g.top_p)
        if synced:
            kwargs.update(synced_gpus=True)
        if g.repetition_penalty != 1.0:
            kwargs.update(repetition_penalty=g.repetition_penalty)
        if g.stop:
            kwargs.update(stop_strings=list(g.stop), tokenizer=self.tokenizer)
        with torch.inference_mode(), dist.autocast(self.precision):
            new = self.model.generate(input_ids=input_ids.to(device),
                                      attention_mask=attention.to(device), **kwargs)
        # an encoder-decoder returns only the decoder's tokens; a decoder-only model returns
        # the prompt too
        texts = self.tokenizer.batch_decode(new[:, width:] if left else new,
                                            skip_special_tokens=True)
        return [_cut(t, g.stop).strip() for t in texts]

    def __call__(self, prompts: str | list[str]) -> str | list[str]:
        one = isinstance(prompts, str)
        convs = [[Message("user", p)] for p in ([prompts] if one else prompts)]
        out = self.generate(convs)
        return out[0] if one else out


def _cut(text: str, stops: list[str]) -> str:
    """`text` up to the first stop string (generation stops on it, but keeps it)."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:at]


def _config_eos(model) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {eos}


def generation_scores(model, tokenizer, cfg: Config, convs: list[Conversation],
                      precision: str, ranks: tuple[int, int] | None = None) -> dict:
    """ROUGE/BLEU/chrF/exact match of what `model` generates for `convs` against their last
    assistant turns (validation during training: the loop's own model, not a saved one).
    With `ranks` (rank, world), each rank generates its share (a collective)."""
    decoder = Decoder(model, tokenizer, decode_kind(cfg.task, tokenizer), cfg.generate,
                      precision, cfg.train.max_length)
    predictions = decoder.generate(convs) if ranks is None else \
        _generate_shared(decoder, convs, *ranks)
    scores = generation_metrics(predictions, [target_text(c) for c in convs])
    return {k: v for k, v in scores.items() if k != "n"}


def _generate_shared(decoder: Decoder, convs: list[Conversation], rank: int, world: int
                     ) -> list[str]:
    """This rank generates its share of the prompts (`dist.rank_share`: as many `generate`
    calls on every rank); the answers of all ranks come back in input order (a
    collective)."""
    share = dist.rank_share(list(range(len(convs))), (rank, world))
    answers = decoder.generate([convs[i] for i, _ in share], synced=True)
    parts: list = [None] * world
    torch.distributed.all_gather_object(
        parts, [(i, a) for (i, counts), a in zip(share, answers) if counts])
    return merge(parts, len(convs))


def merge(parts: list[list[tuple[int, str]]], n: int) -> list[str]:
    """Every rank's (index, answer) pairs, back in input order."""
    out = [""] * n
    for part in parts:
        for i, answer in part:
            out[i] = answer
    return out

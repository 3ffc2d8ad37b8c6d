"""Batched, KV-cached generation with the chat template the model was trained with.

    gen = lmtune.pipeline("runs/sft")          # a run dir, an HF dir, a hub id or an alias
    gen("Summarize: ...")                       # "The paper ..."
    gen.generate([conversation, ...])           # the last assistant turn, if any, is dropped

Prompts are rendered by the tokenizer's own template with the generation prompt, exactly as
training rendered them before the assistant's answer. Decoding stops at EOS *and* at the
template's end-of-turn token (they differ for many chat models), or at a stop string.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from lmtune import dist
from lmtune.config import GenerateConfig
from lmtune.data.formats import Conversation, Message
from lmtune.data.templates import end_of_turn_ids, render
from lmtune.infer.predict import open_run
from lmtune.models.io import load_saved
from lmtune.models.load import attention_impl


class Generator:
    def __init__(self, path: str | Path, precision: str = "auto", cache_dir: str = ""):
        run = open_run(path, cache_dir)
        self.config = run.config
        task = "clm" if run.config and run.config.task == "clm" else "sft"
        attention = attention_impl(run.config.attention if run.config else "auto",
                                   dist.device_type(), task)
        self.model, self.tokenizer = load_saved(run.model_dir, run.base, run.trust, attention,
                                                task=task, cache_dir=cache_dir)
        if hasattr(self.model, "merge_and_unload"):  # a LoRA adapter: fold it in, decode
            self.model = self.model.merge_and_unload()  # at the speed of the base model
        self.tokenizer.padding_side = "left"  # new tokens follow every prompt directly
        self.chat = bool(getattr(self.tokenizer, "chat_template", None)) and task != "clm"
        self.settings = run.config.generate if run.config else GenerateConfig()
        self.precision = dist.resolve_precision(precision)
        self.stop_ids = sorted(end_of_turn_ids(self.tokenizer) | _config_eos(self.model))

    def prompt_text(self, conv: Conversation) -> str:
        """The prompt for `conv` without its final assistant turn (the reference)."""
        if conv and conv[-1].role == "assistant":
            conv = conv[:-1]
        if self.chat:
            return render(self.tokenizer, conv, generation_prompt=True)
        return "\n\n".join(m.content for m in conv)

    def generate(self, convs: list[Conversation], settings: GenerateConfig | None = None,
                 progress: bool = False) -> list[str]:
        """Generated answers, in input order; prompts are batched by length."""
        g = settings or self.settings
        prompts = [self.prompt_text(c) for c in convs]
        ids = [self.tokenizer(p, add_special_tokens=not self.chat)["input_ids"] for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[str] = [""] * len(ids)
        bar = tqdm(total=len(ids), desc="generate", unit="prompt", disable=not progress)
        for s in range(0, len(order), g.batch_size):
            idx = order[s:s + g.batch_size]
            for i, text in zip(idx, self._batch([ids[i] for i in idx], g)):
                out[i] = text
            bar.update(len(idx))
        bar.close()
        return out

    def _batch(self, rows: list[list[int]], g: GenerateConfig) -> list[str]:
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else self.stop_ids[0]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):  # left padding
            input_ids[b, width - len(r):] = torch.tensor(r)
            attention[b, width - len(r):] = 1
        device = next(self.model.parameters()).device
        kwargs = dict(max_new_tokens=g.max_new_tokens, eos_token_id=self.stop_ids,
                      pad_token_id=pad, do_sample=g.temperature > 0)
        if g.temperature > 0:
            kwargs.update(temperature=g.temperature, top_p=g.top_p)
        if g.stop:
            kwargs.update(stop_strings=list(g.stop), tokenizer=self.tokenizer)
        with torch.inference_mode(), dist.autocast(self.precision):
            new = self.model.generate(input_ids=input_ids.to(device),
                                      attention_mask=attention.to(device), **kwargs)
        texts = self.tokenizer.batch_decode(new[:, width:], skip_special_tokens=True)
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

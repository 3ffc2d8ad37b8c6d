"""The models a server holds, by the names clients ask for.

    smollm2               an alias keeps its name
    runs/sft_a            a run dir is served under its directory name ("sft_a")
    chat=runs/sft_a       ... or under a name given to it

Generation runs (sft, clm, dpo, seq2seq) answer chat and completions requests; classifier
runs answer `/v1/classify`. Adapter runs (LoRA and the other weight adapters) trained on the
same base share one copy of the base weights: each is an adapter of one peft model, switched
on for its own batches. A lone adapter run is merged into its base instead, which decodes
faster.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from lmtune.config import GenerateConfig
from lmtune.errors import LmtuneError
from lmtune.infer.decoder import Decoder
from lmtune.infer.generate import decoder_settings
from lmtune.infer.predict import Predictor
from lmtune.models.load import ALIAS_NAMES
from lmtune.rundir import SavedRun, open_run


@dataclass
class Served:
    name: str
    task: str
    root: str  # what the model was trained from (itself for a plain model)
    created: int
    source: str  # what the server was given: a run dir, model dir, alias or hub id
    decoder: Decoder | None = None
    predictor: Predictor | None = None
    adapter: str | None = None  # its adapter's name in a peft model shared with other runs

    @property
    def settings(self) -> GenerateConfig:
        return self.decoder.settings

    @property
    def context(self) -> int | None:
        """The most tokens the model attends to (prompt and answer), where its config says."""
        config = self.decoder.model.config
        config = getattr(config, "decoder", config)  # an encoder-decoder's decoder
        return getattr(config, "max_position_embeddings", None) or \
            getattr(config, "n_positions", None)

    def activate(self) -> None:
        """Switch the shared peft model to this run's adapter (the batcher's thread only)."""
        if self.adapter is not None:
            self.decoder.model.set_adapter(self.adapter)


def parse_specs(specs: list[str]) -> list[tuple[str, str]]:
    """(name, path) for each `NAME=PATH`, run dir, model dir, alias or hub id."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            name = spec if spec in ALIAS_NAMES else Path(spec.rstrip("/")).name \
                if Path(spec).is_dir() else spec
        if not name or not path:
            raise LmtuneError(f"serve: {spec!r}: give MODEL or NAME=MODEL")
        if name in out:
            raise LmtuneError(f"serve: two models are named {name!r}; name one with "
                              f"NAME={path}")
        out[name] = path
    return list(out.items())


def load_served(specs: list[str], precision: str = "auto", cache_dir: str = "",
                log=print) -> dict[str, Served]:
    """Every named model, loaded; adapter runs on one base share it."""
    specs = dict(parse_specs(specs))
    runs = {name: open_run(path, cache_dir) for name, path in specs.items()}
    for name, run in runs.items():
        task = run.task
        if not (task.labels or task.decodes):
            raise LmtuneError(f"serve: {name}: a task={task.name} model neither generates nor "
                              "classifies, so there is nothing to serve")
    groups: dict[tuple, list[str]] = {}
    for name, run in runs.items():
        if run.task.decodes and run.mergeable:
            groups.setdefault(_share_key(run), []).append(name)
    shared = {n: names for names in groups.values() if len(names) > 1 for n in names}
    served: dict[str, Served] = {}
    for name, run in runs.items():
        if name in served:
            continue
        if name in shared:
            served.update(_load_shared({n: runs[n] for n in shared[name]}, precision,
                                       cache_dir, log))
            continue
        log(f"loading {name}")
        if run.task.labels:
            served[name] = _card(name, run, predictor=Predictor(_path_of(run),
                                                               precision=precision))
        else:
            model, tokenizer = run.load(cache_dir=cache_dir, merge=True)
            served[name] = _card(name, run, decoder=Decoder(
                model, tokenizer, **decoder_settings(run, tokenizer, precision)))
    for name, s in served.items():
        s.source = specs[name]
    return served


def training_base(served: dict[str, Served], name: str) -> str:
    """What a fine-tuning job on model `name` trains from: a served generation model's
    source, or an alias."""
    s = served.get(name)
    if s is None and name in ALIAS_NAMES:
        return name
    if s is None or s.decoder is None:
        chat = [n for n, x in served.items() if x.decoder is not None]
        raise LmtuneError(f"model: `{name}` is not a model this server fine-tunes; it "
                          f"fine-tunes {', '.join(chat + list(ALIAS_NAMES))}")
    return s.source


def _load_shared(runs: dict[str, SavedRun], precision: str, cache_dir: str,
                 log) -> dict[str, Served]:
    """Adapter runs on one base: the base loaded once, each run's adapter beside the
    others."""
    from lmtune.models.load import load_tokenizer

    names = list(runs)
    first = runs[names[0]]
    log(f"loading {first.base} once for {', '.join(names)} (adapters share it)")
    model, _ = first.load(cache_dir=cache_dir)
    out = {}
    for i, name in enumerate(names):
        run = runs[name]
        adapter = "default" if i == 0 else f"adapter_{i}"
        if i:
            model.load_adapter(str(run.model_dir), adapter_name=adapter)
        tokenizer = load_tokenizer(str(run.model_dir), run.trust)
        out[name] = _card(name, run, adapter=adapter, decoder=Decoder(
            model, tokenizer, **decoder_settings(run, tokenizer, precision)))
    model.eval()
    return out


def _share_key(run: SavedRun) -> tuple:
    """Runs whose adapters can live in one peft model: the same base, loaded the same way,
    and the same kind of adapter (peft keeps one kind per model)."""
    adapter = json.loads((run.model_dir / "adapter_config.json").read_text())
    return (run.base, run.config.quantization, run.task.model_class, adapter.get("peft_type"))


def _path_of(run: SavedRun) -> Path:
    return run.model_dir.parent if run.config is not None else run.model_dir


def _card(name: str, run: SavedRun, **parts) -> Served:
    stamp = _path_of(run) / ("summary.json" if run.config is not None else "config.json")
    created = int(stamp.stat().st_mtime) if stamp.exists() else int(time.time())
    return Served(name=name, task=run.task.name, root=run.base, created=created, source="",
                  **parts)

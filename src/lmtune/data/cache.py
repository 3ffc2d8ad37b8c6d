"""The tokenized-data cache: a second run on the same data starts in seconds.

Tokenizing is most of the time before the first step on a large set (a million review
rows take minutes), and it gives the same tokens every time for the same data, tokenizer
and settings. The cache keeps each split's `Encoded` arrays, the data report and the data
warnings under a fingerprint of

    the rows as read (every split's texts, labels or conversations, in order)
    the tokenizer and model config files (not the weights)
    the task, data.* settings, train.max_length / batch_size / class_weights, seed and
    lmtune's version

so any change to one of them is a new entry, never a stale one. Entries live in
CACHE_ROOT/data/KEY/ (`cache_dir`), written to a temp dir and renamed, as numpy arrays (no
pickle: a cache dir others can write to cannot run code here) plus a JSON file. The newest
KEEP entries are kept. `data.cache=false` skips it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from lmtune.data.collate import Encoded

FORMAT = 1  # bump when the stored layout or the meaning of a field changes
KEEP = 8  # entries kept; the oldest (by last use) go first
SMALL_FILE = 50 * 2**20  # model dir files hashed in full: tokenizer and config, not weights


def digest_rows(raw, h) -> None:
    """Feed the rows of every split into hash `h`: labelled texts (classify) or items
    (conversations, texts, pairs) as JSON."""
    if hasattr(raw, "items") and isinstance(raw.items, dict):
        for name, items in raw.items.items():
            h.update(f"\x1e{name}\x1e".encode())
            for item in items:
                h.update(json.dumps(item, sort_keys=True, default=repr,
                                    ensure_ascii=False).encode() + b"\x1f")
        return
    for name in ("train", "validation", "test"):
        part = getattr(raw, name, None)
        if part is None:
            continue
        h.update(f"\x1e{name}\x1e".encode())
        for start in range(0, len(part.texts), 10_000):
            h.update("\x1f".join(part.texts[start:start + 10_000]).encode())
            h.update(json.dumps(part.labels[start:start + 10_000]).encode())


def digest_model_files(model_path: str, h) -> None:
    """Every small file of the model dir (tokenizer, vocab, chat template, config)."""
    for p in sorted(Path(model_path).iterdir()) if Path(model_path).is_dir() else []:
        if p.is_file() and p.stat().st_size <= SMALL_FILE and \
                not p.name.endswith((".safetensors", ".bin", ".gguf", ".pt", ".pth")):
            h.update(p.name.encode() + b"\x1e" + p.read_bytes() + b"\x1f")


def cache_key(cfg, raw, model_path: str) -> str:
    from lmtune import __version__

    h = hashlib.blake2b(digest_size=16)
    # what tokenizing reads besides the rows: batch_size sizes packing and the padding
    # figures of the report, class_weights is stored with the training split
    t = cfg.train
    settings = {"format": FORMAT, "lmtune": __version__, "task": cfg.task, "seed": cfg.seed,
                "train": [t.max_length, t.batch_size, t.class_weights],
                "data": dataclasses.asdict(cfg.data)}
    h.update(json.dumps(settings, sort_keys=True).encode())
    digest_model_files(model_path, h)
    digest_rows(raw, h)
    return h.hexdigest()


class DataCache:
    """One entry: `load()` what `save()` stored (None when absent or unreadable)."""

    def __init__(self, root: Path, key: str):
        self.root, self.key = root, key
        self.dir = root / key

    def load(self) -> tuple[dict[str, Encoded], object, list[str]] | None:
        try:
            meta = json.loads((self.dir / "meta.json").read_text())
            if meta.get("format") != FORMAT:
                return None
            with np.load(self.dir / "arrays.npz", allow_pickle=False) as arrays:
                data = {name: _decode(spec, arrays, name)
                        for name, spec in meta["splits"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError,
                zipfile.BadZipFile):  # damaged or from another layout: made again
            return None
        (self.dir / "meta.json").touch()  # last use, for pruning
        return data, _report(meta["report"]), meta["warnings"]

    def save(self, data: dict[str, Encoded], report, warnings: list[str]) -> None:
        """Store an entry; a failure to write (a full disk, a read-only cache dir) costs the
        next run its speed-up, not this run."""
        arrays: dict[str, np.ndarray] = {}
        try:
            meta = {"format": FORMAT, "warnings": list(warnings),
                    "report": None if report is None else
                    {"class": f"{type(report).__module__}.{type(report).__qualname__}",
                     "fields": dataclasses.asdict(report)},
                    "splits": {name: _encode(enc, arrays, name) for name, enc in data.items()}}
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".tmp-"))
            np.savez(tmp / "arrays.npz", **arrays)
            (tmp / "meta.json").write_text(json.dumps(meta))
            shutil.rmtree(self.dir, ignore_errors=True)  # a damaged entry
            try:
                tmp.rename(self.dir)
            except OSError:  # another process stored the same entry first
                shutil.rmtree(tmp, ignore_errors=True)
            self.prune()
        except (OSError, TypeError, ValueError):
            return

    def prune(self) -> None:
        """Keep the KEEP entries used last; drop temp dirs a killed run left over an hour
        ago."""
        import time

        for p in self.root.glob(".tmp-*"):
            if p.stat().st_mtime < time.time() - 3600:
                shutil.rmtree(p, ignore_errors=True)
        entries = [p for p in self.root.iterdir() if (p / "meta.json").exists()]
        entries.sort(key=lambda p: (p / "meta.json").stat().st_mtime, reverse=True)
        for p in entries[KEEP:]:
            shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------ layout
#
# Each `Encoded` field is stored by kind: a list of rows of varying length as one flat
# array plus each row's length ("ragged"; "ragged_list" when the rows were Python lists,
# restored as lists), a list of numbers as one array ("flat"), anything else as JSON.


def _encode(enc: Encoded, arrays: dict, split: str) -> dict:
    spec = {"class": f"{type(enc).__module__}.{type(enc).__qualname__}", "fields": {}}
    for f in dataclasses.fields(enc):
        value, key = getattr(enc, f.name), f"{split}/{f.name}"
        if value is None or f.name == "ref":  # ref: computed from a model, never cached
            continue
        if isinstance(value, list) and value and isinstance(value[0], (list, np.ndarray)):
            arrays[key] = np.concatenate([np.asarray(r).ravel() for r in value]) \
                if any(len(r) for r in value) else np.zeros(0, np.int32)
            arrays[key + "#len"] = np.array([len(r) for r in value], dtype=np.int64)
            spec["fields"][f.name] = "ragged_list" if isinstance(value[0], list) else "ragged"
        elif isinstance(value, list) and f.name in enc.ROWS:
            arrays[key] = np.asarray(value)
            spec["fields"][f.name] = "flat"
        else:
            spec["fields"][f.name] = ["json", value]
    return spec


def _decode(spec: dict, arrays, split: str) -> Encoded:
    kwargs = {}
    for name, kind in spec["fields"].items():
        key = f"{split}/{name}"
        if isinstance(kind, list):
            kwargs[name] = kind[1]
        elif kind == "flat":
            kwargs[name] = arrays[key].tolist()
        else:
            flat, ends = arrays[key], np.cumsum(arrays[key + "#len"]).tolist()
            rows = [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]  # views, no copies
            kwargs[name] = [r.tolist() for r in rows] if kind == "ragged_list" else rows
    return _lmtune_class(spec["class"])(**kwargs)


def _lmtune_class(path: str):
    """A class named in the cache: only lmtune's own (the JSON names it; nothing runs)."""
    module, _, name = path.rpartition(".")
    if not module.startswith("lmtune."):
        raise ValueError(f"not an lmtune class: {path}")
    return getattr(importlib.import_module(module), name)


def _report(stored: dict | None):
    return None if stored is None else _lmtune_class(stored["class"])(**stored["fields"])

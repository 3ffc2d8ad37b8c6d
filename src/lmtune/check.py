"""`lmtune check`: the data a `lmtune train` with the same config would use, read through the
same readers and the task's own encoding, checked for what spoils fine-tunes before they
start (data/checks.py), plus token lengths and truncation at `train.max_length`.
"""
from __future__ import annotations

import time

from lmtune.config import Config
from lmtune.data.checks import check_splits, leaks_or_conflicts
from lmtune.tasks import get_task


def run_check(cfg: Config, tokens: bool = True) -> dict:
    """Every finding (the `--json` file). `tokens`: also load the tokenizer and encode each
    split as training would, for token lengths and the share truncated."""
    began = time.perf_counter()
    task = get_task(cfg.task).for_run(cfg)
    raw = task.read(cfg)
    findings = check_splits(task.check_rows(raw))
    if tokens:
        findings["truncated_share"], findings["tokens"], findings["trained_cut_share"] = \
            token_lengths(cfg, task, raw)
    findings["seconds"] = round(time.perf_counter() - began, 3)
    return findings


def token_lengths(cfg: Config, task, raw) -> tuple[dict, dict, dict]:
    """Per split: the share of rows cut at `train.max_length` (from the task's data report,
    or, where a task keeps none, from the untruncated token counts), token-length figures
    of the encoded rows (after any cut), and, for tasks that train on answers (sft, dpo),
    the share whose cut took trained tokens."""
    from lmtune.models.load import load_model_config, load_tokenizer, resolve_model

    path = resolve_model(cfg.model, cfg.cache_dir)
    tokenizer = load_tokenizer(path, cfg.trust_remote_code)
    model_config = load_model_config(path, cfg.trust_remote_code)
    truncated, lengths, answers = {}, {}, {}
    if not hasattr(raw, "items"):  # a classifier's texts: their tokens, uncut
        for name, rows in task.check_rows(raw).items():
            counts = [len(ids) for ids in tokenizer(rows.texts)["input_ids"]]
            truncated[name] = sum(n > cfg.train.max_length for n in counts) / max(1, len(counts))
            lengths[name] = _figures(counts)
        return truncated, lengths, answers
    for name, items in raw.items.items():
        enc, report = task.encode_split(cfg, tokenizer, items, raw.where[name], model_config,
                                        train=False)
        truncated[name] = report.truncated / max(1, report.samples)
        answers[name] = report.trained_cut / max(1, report.samples)
        lengths[name] = _figures(enc.lengths())
    return truncated, lengths, answers


def _figures(counts: list[int]) -> dict:
    ordered = sorted(counts)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"rows": len(ordered), "mean": round(sum(ordered) / max(1, len(ordered)), 1),
            "p50": at(0.5), "p95": at(0.95), "max": ordered[-1] if ordered else 0}


def strict_problems(findings: dict) -> list[str]:
    """What `--strict` fails on: leakage, label conflicts, secrets."""
    out = leaks_or_conflicts(findings)
    for kind, f in findings.get("secrets", {}).items():
        out.append(f"{f['count']} {kind}(s), e.g. {f['examples'][0]}")
    return out


def format_findings(f: dict, max_length: int) -> str:
    lines = ["rows: " + ", ".join(f"{k} {v:,}" for k, v in f["rows"].items())]
    for name, d in f["duplicates"].items():
        lines.append(f"duplicates in {name}: {d['exact']['count']} exact, "
                     f"{d['near']['count']} near" + _eg(d["exact"]) + _eg(d["near"]))
    for name, o in f["train_test_overlap"].items():
        lines.append(f"{name} rows also in an earlier split: {o['count']}" + _eg(o))
    if f["label_balance"]:
        lines.append(f"texts with more than one label: {f['label_conflicts']['count']}"
                     + _eg(f["label_conflicts"]))
        for name, counts in f["label_balance"].items():
            total = sum(counts.values())
            lines.append(f"labels in {name}: " + ", ".join(
                f"{k} {v / total:.0%}" for k, v in counts.items()))
    for name, share in f.get("truncated_share", {}).items():
        t = f["tokens"][name]
        cut = f["trained_cut_share"].get(name)
        lines.append(f"tokens in {name}: mean {t['mean']}, p95 {t['p95']}, max {t['max']}; "
                     f"{share:.1%} cut at train.max_length={max_length}"
                     + (f", {cut:.1%} losing trained tokens" if cut is not None else ""))
    for key, title in (("near_empty", "near-empty rows"), ("garbled", "garbled text"),
                       ("very_long", "very long rows")):
        for name, g in f[key].items():
            if g["count"]:
                lines.append(f"{title} in {name}: {g['count']}" + _eg(g))
    for key, title in (("secrets", "secrets"), ("pii", "personal data")):
        for kind, g in f[key].items():
            lines.append(f"{title}: {g['count']} {kind}(s)" + _eg(g))
    lines.append(f"checked in {f['seconds']:.1f} s")
    return "\n".join(lines)


def _eg(finding: dict) -> str:
    return f" (e.g. {'; '.join(finding['examples'][:2])})" if finding["count"] else ""

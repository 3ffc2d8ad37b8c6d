"""`lmtune eval` for sft/seq2seq/clm/mlm runs: token loss and perplexity on the test split,
plus generation metrics for sft and seq2seq; with `compare_base`, the same for the model the
run started from.

Loss is streamed (running sums only). Generation is bounded by `eval.max_samples`, since
decoding on a CPU costs far more than a forward pass.
"""
from __future__ import annotations

from pathlib import Path

from lmtune import dist
from lmtune.config import GENERATION_METRICS, Config, load_config
from lmtune.data.lm import encode_eval, load_lm_splits
from lmtune.data.seq2seq import source_text
from lmtune.errors import LmtuneError
from lmtune.eval.metrics import generation_metrics
from lmtune.eval.run import evaluate_lm
from lmtune.infer.predict import open_run
from lmtune.objectives import OBJECTIVES


def evaluate_lm_run(path: str | Path, overrides: list[str] = (), compare_base: bool = False,
                    progress: bool = True) -> tuple[dict, list[dict]]:
    """({"test": metrics[, "base": {"test": metrics}]}, one prediction row per test row)."""
    run = open_run(path)
    if run.config is None:
        raise LmtuneError(f"{path}: not a run dir (no config.yaml); `lmtune eval` needs the "
                          "run's data settings")
    cfg = load_config(Path(path) / "config.yaml", list(overrides))
    # a new test set (data.test=FILE) is read alone: the training data is not needed
    given = any(o.startswith("data.test=") for o in overrides)
    splits = load_lm_splits(cfg, test_only=given)
    if "test" not in splits.items:
        raise LmtuneError(f"{path}: the run has no test split; give data.test=FILE")
    items, where = splits.items["test"], splits.where["test"]
    tuned, rows = evaluate_model(path, cfg, items, where, progress)
    result = {"test": tuned | {"source": where[0].rsplit(":", 1)[0] if where else ""}}
    if compare_base:
        base, base_rows = evaluate_model(cfg.model, cfg, items, where, progress)
        result["base"] = {"test": base}
        for row, b in zip(rows, base_rows):
            if "text" in b:
                row["base_text"] = b["text"]
    return result, rows


def evaluate_model(model_ref: str | Path, cfg: Config, items: list, where: list[str],
                   progress: bool) -> tuple[dict, list[dict]]:
    """Metrics of one model (a run dir, or the base model's name) on `items`."""
    objective = OBJECTIVES[cfg.task]
    precision = dist.resolve_precision(cfg.train.precision)
    generator = None
    if cfg.task == "mlm":
        from lmtune.models.io import load_saved

        run = open_run(model_ref, cfg.cache_dir)
        model, tokenizer = load_saved(run.model_dir, run.base, run.trust, "eager", task="mlm",
                                      cache_dir=cfg.cache_dir)
    else:
        from lmtune.infer.generate import Generator

        generator = Generator(model_ref, precision=precision, cache_dir=cfg.cache_dir)
        model, tokenizer = generator.model, generator.tokenizer
    enc = encode_eval(tokenizer, items, where, cfg,
                      getattr(model.config, "decoder_start_token_id", None))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    metrics = evaluate_lm(model, enc, objective, cfg.eval.batch_size, pad,
                          lambda: dist.autocast(precision), progress)
    rows: list[dict] = [{"where": w} for w in where]
    if cfg.task in ("sft", "seq2seq") and generator is not None:
        n = cfg.eval.max_samples or len(items)
        subset = items[:n]
        predictions = generator.generate(subset, cfg.generate, progress=progress)
        references = [conv[-1].content for conv in subset]
        metrics |= {"generated": len(subset)} | {
            k: v for k, v in generation_metrics(predictions, references).items() if k != "n"}
        for row, conv, text in zip(rows, subset, predictions):
            row.update(prompt=source_text(conv), reference=conv[-1].content, text=text)
        rows = rows[:n]
    return metrics, rows


def format_lm_metrics(result: dict) -> str:
    """The eval table; with a base model, side by side with the difference."""
    test, base = result["test"], result.get("base", {}).get("test")
    keys = [k for k in ("loss", "perplexity", *GENERATION_METRICS) if k in test]
    lines = [f"test set: {test.get('source', '?')} ({test['n']} rows"
             + (f", {test['generated']} generated)" if "generated" in test else ")")]
    if base is None:
        lines += [f"  {k:<12} {test[k]:10.4f}" for k in keys]
        return "\n".join(lines)
    lines.append(f"  {'metric':<12} {'base':>10} {'tuned':>10} {'change':>10}")
    for k in keys:
        lines.append(f"  {k:<12} {base[k]:10.4f} {test[k]:10.4f} {test[k] - base[k]:+10.4f}")
    return "\n".join(lines)

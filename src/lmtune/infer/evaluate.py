"""`lmtune eval`: a saved run's test metrics, on its own test split or on new data
(`data.test=FILE`), and with `compare_base` the same for the model it started from.

    classifiers  accuracy, macro-F1, per class, confusion matrix, majority baseline
    LMs          token loss and perplexity; for tasks that generate, ROUGE/BLEU/chrF/exact
                 match on the first `eval.max_samples` rows (decoding costs far more than a
                 forward pass)

`evaluate_run` returns ({"test": metrics[, "base": {"test": metrics}]}, one row per test
row); `format_result` is the table the CLI prints.
"""
from __future__ import annotations

import sys
from pathlib import Path

from lmtune import runtime
from lmtune.config import GENERATION_METRICS, Config, load_config
from lmtune.data.seq2seq import source_text
from lmtune.errors import LmtuneError
from lmtune.eval.metrics import generation_metrics
from lmtune.infer.predict import Predictor
from lmtune.rundir import open_run
from lmtune.tasks import EvalSettings, Task, get_task


def evaluate_run(path: str | Path, overrides: list[str] | tuple = (),
                 compare_base: bool = False, progress: bool = False,
                 predictions: bool = False) -> tuple[dict, list[dict]]:
    """Test metrics of the run at `path`; `overrides` are data.* settings (`data.test=FILE`
    reads that file alone). Rows: the generated texts of tasks that generate; a classifier's
    predictions when `predictions` is set."""
    run = open_run(path)
    if run.config is None:
        raise LmtuneError(f"{path}: not a run dir (no config.yaml); `lmtune eval` needs the "
                          "run's data settings")
    cfg = load_config(Path(path) / "config.yaml", list(overrides))
    new_test = any(o.startswith("data.test=") for o in overrides)
    if run.task.labels:
        return evaluate_classifier_run(path, cfg, new_test, compare_base, progress,
                                       predictions)
    return evaluate_lm_run(path, cfg, run.task.for_run(cfg), new_test, compare_base,
                           progress)


# ------------------------------------------------------------------------- classifiers


def evaluate_classifier_run(path, cfg: Config, new_test: bool, compare_base: bool,
                            progress: bool, predictions: bool) -> tuple[dict, list[dict]]:
    from lmtune.data.load import check_known_labels, labeled, load_splits, read_source
    from lmtune.eval.metrics import classifier_warnings, majority_baseline
    from lmtune.eval.multilabel import multilabel_warnings

    clf = Predictor(path)
    if new_test:  # new data, with its own columns
        table = read_source(cfg.data.test, cfg.seed)
        table = table["test"] if isinstance(table, dict) else table
        test = labeled(table, cfg.data)
        check_known_labels(test, table, cfg.data, clf.label_names)
    else:
        test = load_splits(cfg.data, cfg.seed).test
        if test is None:
            raise LmtuneError(f"{path}: the run has no test split; give data.test=FILE")
    metrics = clf.evaluate(test.texts, test.labels, progress, predictions)
    preds = metrics.pop("predictions", None)
    train_labels = None if clf.multi_label else _training_labels(Path(path))
    if train_labels is not None:
        metrics["majority_baseline"] = majority_baseline(train_labels, test.labels)
    metrics["source"] = test.source
    result = {"test": metrics}
    base = evaluate_classifier_base(clf, test.texts, test.labels, progress) \
        if compare_base else None
    if base is not None:
        result["base"] = {"test": base}
    result["warnings"] = multilabel_warnings(metrics, base) if clf.multi_label else \
        classifier_warnings(metrics, metrics.get("majority_baseline"), base)
    # `label` is the true one (multi-label: `labels`), `predicted` the model's
    rows = [{"text": t, **_truth_and_prediction(y, p)}
            for t, y, p in zip(test.texts, test.labels, preds)] if preds is not None else []
    return result, rows


def _truth_and_prediction(truth, p: dict) -> dict:
    if "labels" in p:  # multi-label
        return {"labels": list(truth), "predicted": p["labels"], "scores": p["scores"]}
    return {"label": truth, "predicted": p["label"], "score": p["score"],
            "scores": p["scores"]}


def _training_labels(run_dir: Path) -> list[str] | None:
    """The run's training labels, read with the run's own data settings (not the overrides
    that describe the new test file); None when that data is no longer there."""
    from lmtune.data.load import load_splits

    saved = load_config(run_dir / "config.yaml")
    try:
        return load_splits(saved.data, saved.seed).train.labels
    except LmtuneError as e:
        print(f"note: no majority baseline; the training data cannot be read ({e})",
              file=sys.stderr)
        return None


def evaluate_classifier_base(clf: Predictor, texts: list[str], labels: list[str],
                             progress: bool = False) -> dict:
    """The run's base model, with a new classification head drawn as training drew it, on
    the same texts: what fine-tuning started from."""
    import torch

    from lmtune.models.load import attention_impl, load_classifier, resolve_model

    cfg = clf.config
    torch.manual_seed(cfg.seed)
    model = load_classifier(resolve_model(cfg.model, cfg.cache_dir), clf.label_names,
                            cfg.trust_remote_code,
                            attention_impl(cfg.attention, runtime.device_type(),
                                           get_task(cfg.task).eager_on_cpu))
    return clf.evaluate_model(model.eval(), texts, labels, progress)


# ---------------------------------------------------------------------- language models


def evaluate_lm_run(path, cfg: Config, task: Task, new_test: bool, compare_base: bool,
                    progress: bool) -> tuple[dict, list[dict]]:
    splits = task.read(cfg, test_only=new_test)  # a new test set is read alone
    if "test" not in splits.items:
        raise LmtuneError(f"{path}: the run has no test split; give data.test=FILE")
    items, where = splits.items["test"], splits.where["test"]
    tuned, rows = evaluate_lm_model(path, cfg, task, items, where, progress,
                                    reference=cfg.model)
    result = {"test": tuned | {"source": where[0].rsplit(":", 1)[0] if where else ""}}
    if compare_base:
        base, base_rows = evaluate_lm_model(cfg.model, cfg, task, items, where, progress)
        result["base"] = {"test": base}
        for row, b in zip(rows, base_rows):
            if "text" in b:
                row["base_text"] = b["text"]
    return result, rows


def evaluate_lm_model(model_ref: str | Path, cfg: Config, task: Task, items: list,
                      where: list[str], progress: bool, reference: str | None = None
                      ) -> tuple[dict, list[dict]]:
    """Metrics of one model (a run dir, or the base model's name) on `items`; `reference`
    names the model the run started from, for tasks that score against it (DPO)."""
    precision = runtime.resolve_precision(cfg.train.precision)
    generator = None
    if task.decodes:
        from lmtune.infer.generate import Generator

        generator = Generator(model_ref, precision=precision, cache_dir=cfg.cache_dir)
        model, tokenizer = generator.model, generator.tokenizer
    else:  # loaded as the run's task, also for the base (an MLM head on a bare encoder)
        from lmtune.models.io import load_saved
        from lmtune.models.load import attention_impl

        run = open_run(model_ref, cfg.cache_dir)
        model, tokenizer = load_saved(
            run.model_dir, run.base, run.trust,
            attention_impl(cfg.attention, runtime.device_type(), task.eager_on_cpu),
            auto_class=task.model_class, cache_dir=cfg.cache_dir)
    enc, _ = task.encode_split(cfg, tokenizer, items, where, model.config, train=False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    how = EvalSettings(cfg.eval.batch_size, pad, lambda: runtime.autocast(precision),
                       progress=progress)
    task.before_eval(model, enc, reference and (
        lambda: open_run(reference, cfg.cache_dir).load(cache_dir=cfg.cache_dir, merge=True)[0]), how)
    metrics = task.evaluate(model, enc, how)
    rows: list[dict] = [{"where": w} for w in where]
    if task.generates and generator is not None:
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


# ---------------------------------------------------------------------------- tables


def format_result(result: dict) -> str:
    """The table `lmtune eval` prints: a classifier's metrics (with the base model beside
    them), or an LM's (side by side with the base and the change)."""
    test = result["test"]
    if "per_class" not in test:
        return format_lm_metrics(result)
    multi = "micro_f1" in test
    text = (format_multilabel if multi else format_metrics)(test, list(test["per_class"]))
    if "base" in result:
        text += "\n" + format_comparison(result["base"]["test"], test,
                                         MULTI_HEADLINE if multi else HEADLINE)
    return text + "".join(f"\nwarning: {w}" for w in result.get("warnings", []))


HEADLINE = ("accuracy", "macro_f1", "loss")
MULTI_HEADLINE = ("micro_f1", "macro_f1", "subset_accuracy", "loss")


def format_comparison(base: dict, tuned: dict, keys: tuple[str, ...] = HEADLINE) -> str:
    """Base (the pretrained encoder with a new, untrained head) beside the tuned run."""
    lines = ["", f"  {'metric':<18} {'base':>8} {'tuned':>8} {'change':>8}"]
    for k in keys:
        lines.append(f"  {k:<18} {base[k]:8.4f} {tuned[k]:8.4f} {tuned[k] - base[k]:+8.4f}")
    if "majority_baseline" in tuned:
        lines.append(f"  {'majority baseline':<18} {tuned['majority_baseline']:8.4f}")
    lines.append("  (base: the pretrained model with a freshly initialized head, seeded as in "
                 "training)")
    return "\n".join(lines)


def format_metrics(m: dict, names: list[str]) -> str:
    """The eval table: headline metrics, per-class scores, confusion matrix."""
    lines = [f"test set: {m.get('source', '?')} ({m['n']} rows)",
             f"  accuracy           {m['accuracy']:.4f}",
             f"  macro-F1           {m['macro_f1']:.4f}",
             f"  loss               {m['loss']:.4f}"]
    if "majority_baseline" in m:
        lines.append(f"  majority baseline  {m['majority_baseline']:.4f}")
    w = max(8, *(len(n) for n in names))
    lines += ["", f"  {'class':<{w}}  precision  recall  f1      support"]
    for name, c in m["per_class"].items():
        lines.append(f"  {name:<{w}}  {c['precision']:.4f}     {c['recall']:.4f}  "
                     f"{c['f1']:.4f}  {c['support']}")
    lines += ["", "  confusion matrix (rows: true, columns: predicted)",
              "  " + " " * w + "".join(f"  {n:>{w}}" for n in names)]
    for name, row in zip(names, m["confusion_matrix"]):
        lines.append(f"  {name:<{w}}" + "".join(f"  {v:>{w}}" for v in row))
    return "\n".join(lines)


def format_multilabel(m: dict, names: list[str]) -> str:
    """The eval table of a multi-label classifier: headline metrics, then per label."""
    lines = [f"test set: {m.get('source', '?')} ({m['n']} rows)"]
    lines += [f"  {k.replace('_', ' '):<18} {m[k]:.4f}" for k in MULTI_HEADLINE]
    w = max(8, *(len(n) for n in names))
    lines += ["", f"  {'label':<{w}}  precision  recall  f1      support  predicted  threshold"]
    for name, c in m["per_class"].items():
        lines.append(f"  {name:<{w}}  {c['precision']:.4f}     {c['recall']:.4f}  "
                     f"{c['f1']:.4f}  {c['support']:<7}  {c['predicted']:<9}  "
                     f"{c['threshold']:.2f}")
    return "\n".join(lines)


def format_lm_metrics(result: dict) -> str:
    """The eval table; with a base model, side by side with the difference."""
    test, base = result["test"], result.get("base", {}).get("test")
    keys = [k for k, v in test.items() if isinstance(v, float)]
    w = max(12, *map(len, keys))
    lines = [f"test set: {test.get('source', '?')} ({test['n']} rows"
             + (f", {test['generated']} generated)" if "generated" in test else ")")]
    if base is None:
        lines += [f"  {k:<{w}} {test[k]:10.4f}" for k in keys]
        return "\n".join(lines)
    lines.append(f"  {'metric':<{w}} {'base':>10} {'tuned':>10} {'change':>10}")
    for k in keys:  # a base model alone has no reference to score DPO's rewards against
        if k not in base:
            lines.append(f"  {k:<{w}} {'-':>10} {test[k]:10.4f}")
            continue
        lines.append(f"  {k:<{w}} {base[k]:10.4f} {test[k]:10.4f} {test[k] - base[k]:+10.4f}")
    return "\n".join(lines)

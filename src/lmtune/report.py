"""`lmtune report RUN [RUN ...]`: one self-contained HTML page per run, or one comparing
several, read from what the runs wrote (metrics.jsonl, summary.json, eval.json,
data_report.json, config.yaml). Figures are matplotlib SVG inlined in the page, the style is
inline CSS: the file opens anywhere, offline. Training never imports this module.
"""
from __future__ import annotations

import html
import io
import json
from pathlib import Path

from lmtune.errors import LmtuneError

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d1d1f; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: right;
         vertical-align: top; max-width: 420px; }
th { background: #f5f5f7; } td:first-child, th:first-child { text-align: left; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; } .figs svg { max-width: 520px; height: auto; }
pre { background: #f5f5f7; padding: .8em; overflow-x: auto; font-size: 12px; }
.muted { color: #6e6e73; } td.t { text-align: left; white-space: pre-wrap; }
"""


def read_run(path: Path) -> dict:
    """What a run dir holds, each file optional but the metrics log."""
    if not (path / "metrics.jsonl").is_file():
        raise LmtuneError(f"{path}: not a run dir (no metrics.jsonl)")
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()
            if x.strip()]
    read = lambda name: json.loads((path / name).read_text()) \
        if (path / name).is_file() else None  # noqa: E731
    config = (path / "config.yaml").read_text() if (path / "config.yaml").is_file() else ""
    samples = [json.loads(x) for x in (path / "eval_samples.jsonl").read_text().splitlines()
               if x.strip()] if (path / "eval_samples.jsonl").is_file() else []
    return {"name": path.name, "path": path, "rows": [r for r in rows if "event" not in r],
            "summary": read("summary.json"), "eval": read("eval.json"),
            "data": read("data_report.json"), "config": config, "samples": samples}


def series(run: dict, key: str, split: str = "train") -> tuple[list, list]:
    rows = [r for r in run["rows"] if r.get("split", "train") == split and key in r
            and isinstance(r[key], (int, float))]
    return [r["step"] for r in rows], [r[key] for r in rows]


def figure(runs: list[dict], key: str, split: str, title: str) -> str:
    """An SVG line chart of `key` over steps, one line per run ("" when no run has two
    points of it)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the figure only goes into the page
    import matplotlib.pyplot as plt

    lines = [(run["name"], *series(run, key, split)) for run in runs]
    if max(len(xs) for _, xs, _ in lines) < 2:  # one point is no curve (the tables show it)
        return ""
    fig, ax = plt.subplots(figsize=(5.2, 3.0), dpi=100)
    for name, xs, ys in lines:
        if xs:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=name)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    ax.grid(alpha=.3)
    ax.tick_params(labelsize=8)
    if len(runs) > 1:
        ax.legend(fontsize=8)
    return inline_svg(fig)


def confusion_figure(test: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, m = list(test["per_class"]), test["confusion_matrix"]
    fig, ax = plt.subplots(figsize=(1.2 + .6 * len(names), 1.0 + .6 * len(names)), dpi=100)
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    top = max(max(r) for r in m) or 1
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                    color="white" if v > top / 2 else "black")
    return inline_svg(fig)


def inline_svg(fig) -> str:
    """The figure as an `<svg>` element for the page (no XML prolog), closed after."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def table(header: list[str], rows: list[list]) -> str:
    def cell(v) -> str:  # numbers right-aligned, text left
        if isinstance(v, float):
            return f"<td>{v:.4f}</td>"
        return f"<td>{v}</td>" if isinstance(v, int) else \
            f"<td class='t'>{html.escape(str(v))}</td>"

    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>"
                      for r in rows) + "</table>")


SAMPLES = 8  # generated test rows shown per run
CURVES = [("loss", "train", "training loss"), ("lr", "train", "learning rate"),
          ("tokens_per_s", "train", "throughput (tokens/s)"),
          ("loss", "validation", "validation loss")]
VALIDATION = ("accuracy", "macro_f1", "micro_f1", "subset_accuracy", "rougeL", "chrf",
              "rewards/accuracies",
              "rewards/margins", "preference_accuracy")


def section_curves(runs: list[dict]) -> str:
    figs = [figure(runs, k, split, title) for k, split, title in CURVES]
    figs += [figure(runs, k, "validation", f"validation {k}") for k in VALIDATION]
    return "<h2>Training</h2><div class='figs'>" + "".join(f for f in figs if f) + "</div>"


def section_results(runs: list[dict]) -> str:
    """The test metrics side by side, then per run its class table and confusion matrix,
    or its generated samples."""
    tests = []
    for r in runs:
        tests.append((r["name"], (r["eval"] or {}).get("test") or
                      (r["summary"] or {}).get("test") or {}))
        if (r["eval"] or {}).get("base"):  # `lmtune eval --compare-base` was run
            tests.append((f"{r['name']} (base)", r["eval"]["base"]["test"]))
    keys = [k for k in dict.fromkeys(k for _, t in tests for k, v in t.items()
                                     if isinstance(v, float))]
    out = "<h2>Test results</h2>" + table(["metric", *[n for n, _ in tests]],
                                          [[k, *[t.get(k, "-") for _, t in tests]]
                                           for k in keys])
    for name, test in tests:
        if "per_class" in test:
            out += class_table(name, test["per_class"])
        if "confusion_matrix" in test:  # one label per row (multi-label has none)
            out += (f"<h3>{html.escape(name)}: confusion matrix (rows: true, columns: "
                    "predicted)</h3><div class='figs'>" + confusion_figure(test) + "</div>")
    return out


def class_table(name: str, per_class: dict) -> str:
    """Precision, recall, F1 and support per class (multi-label: also how often each label
    was predicted, and its threshold)."""
    keys = [k for k in ("precision", "recall", "f1", "support", "predicted", "threshold")
            if k in next(iter(per_class.values()), {})]
    return (f"<h3>{html.escape(name)}: per class</h3>"
            + table(["class", *keys], [[c, *(v[k] for k in keys)]
                                       for c, v in per_class.items()]))


def section_run(run: dict) -> str:
    s = run["summary"] or {}
    keys = ("task", "model", "method", "precision", "processes", "distributed",
            "trainable_params", "total_params", "steps", "epochs", "seconds",
            "samples_per_second", "tokens_per_second", "peak_memory_mb")
    out = f"<h2>{html.escape(run['name'])}</h2>" + table(
        ["summary", "value"], [[k, s[k]] for k in keys if k in s])
    if s.get("best"):
        out += f"<p>best validation {s['best']['metric']}: {s['best']['value']:.4f} " \
               f"(step {s['best']['step']})</p>"
    for w in s.get("warnings", []):
        out += f"<p><b>warning:</b> {html.escape(w)}</p>"
    if run["samples"]:  # what `lmtune eval` generated, beside the references
        shown = run["samples"][:SAMPLES]
        cut = lambda t: t if len(t) <= 400 else t[:400] + "…"  # noqa: E731
        base = "base_text" in shown[0]
        out += f"<h3>generated on the test set (first {len(shown)} of " \
               f"{len(run['samples'])})</h3>" + table(
                   ["prompt", "reference", "generated", *(["base model"] if base else [])],
                   [[cut(r.get("prompt", "")), cut(r.get("reference", "")), cut(r["text"]),
                     *([cut(r.get("base_text", ""))] if base else [])] for r in shown])
    if run["data"]:
        out += "<h3>data report</h3>" + table(
            ["", "value"], [[k, v] for k, v in run["data"].items()
                            if not isinstance(v, dict)])
    out += f"<details><summary>config.yaml</summary><pre>{html.escape(run['config'])}</pre>" \
           "</details>"
    return out


def environment(runs: list[dict]) -> str:
    """Each run's versions and hardware, as its summary.json recorded them."""
    envs = [(r["name"], (r["summary"] or {}).get("environment") or {}) for r in runs]
    keys = list(dict.fromkeys(k for _, e in envs for k in e))
    if not keys:
        return ""
    return "<h2>Environment</h2>" + table(["", *[n for n, _ in envs]],
                                          [[k, *[e.get(k, "-") for _, e in envs]]
                                           for k in keys])


def build_report(paths: list[Path]) -> str:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise LmtuneError("lmtune report draws its figures with matplotlib: "
                          "pip install 'lmtune[report]'")
    runs = [read_run(Path(p)) for p in paths]
    title = "lmtune report: " + ", ".join(r["name"] for r in runs)
    body = (f"<h1>{html.escape(title)}</h1>" + section_curves(runs) + section_results(runs)
            + "".join(section_run(r) for r in runs) + environment(runs))
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}" \
           f"</title><style>{CSS}</style></head><body>{body}</body></html>"


def write_report(paths: list[Path], output: Path | None = None) -> Path:
    """RUN/report.html for one run; `output` (required for several) elsewhere."""
    if output is None:
        if len(paths) > 1:
            raise LmtuneError("several runs make one comparison report: give --output FILE")
        output = Path(paths[0]) / "report.html"
    from lmtune.rundir import atomic_write_text

    atomic_write_text(output, build_report(paths))
    return output

"""`lmtune train | resume | plan | check | report | eval | predict | generate | export | serve`:
a thin dispatcher.

Bad input exits with code 2 and one clear `error:` line, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmtune.cli_io import print_predictions, read_prompts, read_texts, write_jsonl
from lmtune.errors import Interrupted, LmtuneError
from lmtune.plan.command import add_plan_command
from lmtune.serve.command import add_serve_command, cmd_serve

DESCRIPTION = "lmtune: efficient fine-tuning of language models."


def _config_keys_help() -> str:
    from lmtune.config import describe

    rows = describe()
    width = max(len(k) for k, _, _ in rows)
    lines = [f"  {k:<{width}}  {h} (default: {d})" for k, d, h in rows]
    return "config keys (set in YAML or as key=value):\n" + "\n".join(lines)


LOW_MEMORY_HELP = ("give each large buffer its own memory mapping: peak memory set by the "
                   "largest batch, flat in the number of rows, at the cost of page faults "
                   "(slower, most with fast bf16 forwards; glibc)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmtune", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser("train", help="fine-tune a model; no arguments: MiniLM on "
                       "rotten_tomatoes", formatter_class=fmt, epilog=_config_keys_help(),
                       description="Fine-tune a model. Examples:\n  lmtune train\n  lmtune "
                       "train configs/lora.yaml train.lr=3e-4\n  lmtune train data.train="
                       "reviews.csv data.text_column=review method=lora")
    t.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value]",
                   help="an optional YAML config, then dotted overrides")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--nproc", type=int, default=1, metavar="N", help="train in N processes "
                   "on this machine (torchrun; gloo on CPU, NCCL on GPUs); train.batch_size "
                   "is per process")

    r = sub.add_parser("resume", help="continue a stopped run from its newest valid checkpoint",
                       formatter_class=fmt, description="Continue a run exactly where its "
                       "newest valid checkpoint left it. Example:\n  lmtune resume runs/default")
    r.add_argument("run_dir", help="a run dir written by `lmtune train`")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--nproc", type=int, default=0, metavar="N", help="processes (default: as "
                   "many as wrote the checkpoint; torchrun is started for more than one)")

    c = sub.add_parser("check", help="check the training data for leaks, duplicates, label "
                       "conflicts, truncation, secrets and personal data", formatter_class=fmt,
                       description="Check the data `lmtune train` would use with the same "
                       "config. Examples:\n  lmtune check\n  lmtune check configs/lora.yaml "
                       "--strict --json findings.json")
    c.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value]",
                   help="the config `lmtune train` would take")
    c.add_argument("--strict", action="store_true", help="exit 1 when rows leak between "
                   "splits, a text has two labels, or a secret is found")
    c.add_argument("--json", dest="json_path", help="write every finding to this file")
    c.add_argument("--no-tokens", action="store_true", help="skip token lengths (no "
                   "tokenizer is loaded)")

    rp = sub.add_parser("report", help="write an HTML report of one run, or compare several",
                        formatter_class=fmt, description="A self-contained HTML report "
                        "(curves, test results, data report, config). Examples:\n  lmtune "
                        "report runs/default\n  lmtune report runs/a runs/b --output cmp.html")
    rp.add_argument("run_dirs", nargs="+", help="run dirs written by `lmtune train`")
    rp.add_argument("--output", help="where to write it (default: RUN/report.html; required "
                    "for several runs)")

    add_model_commands(sub, fmt)
    add_plan_command(sub, fmt)
    add_serve_command(sub)
    return parser


def add_model_commands(sub, fmt) -> None:
    """The commands that use a trained run: eval, generate, predict, export."""
    e = sub.add_parser("eval", help="evaluate a saved run on its test split or new data",
                       formatter_class=fmt, description="Evaluate a run. Examples:\n  "
                       "lmtune eval runs/default\n  lmtune eval runs/default data.test="
                       "other.csv data.text_column=review")
    e.add_argument("run_dir", help="a run dir written by `lmtune train`")
    e.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data.* settings, e.g. data.test=FILE")
    e.add_argument("--json", dest="json_path", help="where to write the metrics "
                   "(default: RUN_DIR/eval.json)")
    e.add_argument("--output", help="write one prediction per input row to this JSONL file")
    e.add_argument("--compare-base", action="store_true", help="also evaluate the model the "
                   "run started from, side by side")
    e.add_argument("--low-memory", action="store_true", help=LOW_MEMORY_HELP)

    g = sub.add_parser("generate", help="generate answers with a saved sft, clm, dpo or "
                       "seq2seq run, or a causal LM", formatter_class=fmt, description="Generate text. "
                       "Examples:\n  lmtune generate runs/sft --prompt 'Summarize: ...'\n  "
                       "lmtune generate smollm2 --input prompts.jsonl --output answers.jsonl "
                       "generate.max_new_tokens=64")
    g.add_argument("model", help="a run dir, an HF causal-LM dir, a hub id or an alias")
    g.add_argument("overrides", nargs="*", metavar="key=value",
                   help="generate.* settings, e.g. generate.temperature=0.7")
    g.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    g.add_argument("--input", help="JSONL in any chat format (a final assistant turn is the "
                   "reference, not shown to the model), or .txt with one prompt per line")
    g.add_argument("--output", help="write one JSON object per prompt here (field `text`)")

    p = sub.add_parser("predict", help="label texts with a saved run", formatter_class=fmt,
                       description="Predict labels. Examples:\n  lmtune predict runs/default "
                       "'a triumph' 'a mess'\n  lmtune predict runs/default --input new.csv "
                       "--output preds.jsonl")
    p.add_argument("run_dir", help="a run dir, or an HF sequence-classification model dir")
    p.add_argument("texts", nargs="*", help="texts to label")
    p.add_argument("--input", help="a .txt file (one text per line) or a data file with the "
                   "run's text column")
    p.add_argument("--output", help="write JSONL here instead of printing a table")
    p.add_argument("--jsonl", action="store_true", help="print JSONL instead of a table")
    p.add_argument("--low-memory", action="store_true", help=LOW_MEMORY_HELP)

    x = sub.add_parser("export", help="write a run's model out: HF dir (adapter merged or "
                       "not) or ONNX, with a parity check", formatter_class=fmt,
                       description="Export a run. Examples:\n  lmtune export runs/lora "
                       "out/lora-merged --merge\n  lmtune export runs/default out/onnx "
                       "--format onnx")
    x.add_argument("run_dir", help="a run dir written by `lmtune train`")
    x.add_argument("out", help="a new (or empty) directory to write")
    x.add_argument("--merge", action="store_true", help="fold an adapter into the base "
                   "weights: a plain HF model dir that loads without peft")
    x.add_argument("--format", choices=["hf", "onnx"], default="hf",
                   help="hf (default) or onnx (the adapter is merged first)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (argparse stops collecting a
    # positional list at the first option)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-")
                                                    for x in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from lmtune.runtime import configure_process

    configure_process()  # before any matmul: oneDNN reads its settings once
    try:
        return {"train": cmd_train, "resume": cmd_resume, "eval": cmd_eval, "check": cmd_check,
                "report": cmd_report, "plan": cmd_plan,
                "generate": cmd_generate, "predict": cmd_predict,
                "export": cmd_export, "serve": cmd_serve}[args.command](args)
    except LmtuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except Interrupted as e:  # a signal stopped training after a checkpoint
        if e.checkpoint:  # the rank that wrote it (the others hold no path)
            print(f"{e}\nresume with: lmtune resume {e.checkpoint.parent.parent}",
                  file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def config_of(args):
    """The config from `[CONFIG.yaml] [key=value ...]`."""
    from lmtune.config import load_config

    items = list(args.args)
    path = None
    if items and "=" not in items[0]:
        path = items.pop(0)
    bad = [x for x in items if "=" not in x]
    if bad:
        raise LmtuneError(f"command line: expected key=value, got {bad[0]!r} (only the first "
                          "argument may be a config file)")
    return load_config(path, items)


def cmd_check(args) -> int:
    from lmtune.check import format_findings, run_check, strict_problems
    from lmtune.rundir import atomic_write_json

    cfg = config_of(args)
    findings = run_check(cfg, tokens=not args.no_tokens)
    print(format_findings(findings, cfg.train.max_length))
    if args.json_path:
        atomic_write_json(Path(args.json_path), findings)
        print(f"wrote {args.json_path}")
    problems = strict_problems(findings)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if args.strict and problems else 0


def cmd_plan(args) -> int:
    from lmtune.plan.command import cmd_plan as run

    return run(args, config_of(args))


def cmd_report(args) -> int:
    from lmtune.report import write_report

    out = write_report([Path(p) for p in args.run_dirs],
                       Path(args.output) if args.output else None)
    print(f"wrote {out}")
    return 0


def cmd_train(args) -> int:
    from lmtune.train import train

    cfg = config_of(args)  # a bad config stops here, before any process starts
    if args.nproc > 1:
        if cfg.train.distributed == "deepspeed":
            from lmtune.distributed.zero import require

            require()
        return launch(args.nproc, ["train", *(["--quiet"] if args.quiet else []), *args.args])
    train(cfg, progress=not args.quiet)
    return 0


def launch(nproc: int, argv: list[str]) -> int:
    """Run `lmtune ARGV` in `nproc` processes under torchrun (standalone rendezvous).

    SIGTERM and SIGINT sent to this process (a scheduler, a container runtime, Ctrl-C) go
    on to torchrun, which hands them to the ranks; they checkpoint and stop, and this
    process exits 128 + the signal number once they have."""
    import signal
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(nproc), "-m", "lmtune", *argv]
    print("launching: " + " ".join(cmd[1:]), file=sys.stderr)
    proc = subprocess.Popen(cmd)
    got: list[int] = []

    def forward(signum, frame):
        got.append(signum)
        proc.send_signal(signum)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 128 + got[0] if got else code


def cmd_resume(args) -> int:
    from lmtune.checkpoint import world_size
    from lmtune.config import load_config
    from lmtune.train import train

    saved = Path(args.run_dir) / "config.yaml"
    if not saved.is_file():
        raise LmtuneError(f"{args.run_dir}: not a run dir (no config.yaml)")
    cfg = load_config(saved, [f"output_dir={args.run_dir}", "resume=true",
                                 "overwrite=false"])
    nproc = args.nproc or world_size(Path(args.run_dir) / "checkpoints")
    if nproc > 1 and not torch_launched():  # the ranks themselves run the resume below
        return launch(nproc, ["resume", args.run_dir, *(["--quiet"] if args.quiet else [])])
    train(cfg, progress=not args.quiet)
    return 0


def torch_launched() -> bool:
    """Whether this process is a rank that torchrun (or accelerate launch) started."""
    import torch.distributed

    return torch.distributed.is_torchelastic_launched()


def low_memory(args) -> None:
    """--low-memory: glibc maps large buffers apart from here on (before the model loads)."""
    from lmtune import runtime

    if args.low_memory and not runtime.map_large_buffers():
        print("note: --low-memory needs glibc's mallopt; running without it", file=sys.stderr)


def cmd_eval(args) -> int:
    from lmtune.infer.evaluate import evaluate_run, format_result
    from lmtune.rundir import atomic_write_json

    low_memory(args)
    result, rows = evaluate_run(args.run_dir, args.overrides, args.compare_base,
                                progress=True, predictions=bool(args.output))
    print(format_result(result))
    out = Path(args.json_path) if args.json_path else Path(args.run_dir) / "eval.json"
    atomic_write_json(out, result)
    print(f"\nwrote {out}")
    generated = [r for r in rows if "text" in r]
    if generated and not args.json_path:  # beside eval.json, for `lmtune report`
        write_jsonl(Path(args.run_dir) / "eval_samples.jsonl", generated)
    if args.output:
        write_jsonl(Path(args.output), rows)
        print(f"wrote {len(rows)} predictions to {args.output}")
    return 0


def cmd_generate(args) -> int:
    from lmtune.config import load_config
    from lmtune.data.formats import Message
    from lmtune.infer.generate import Generator

    bad = [o for o in args.overrides if not o.startswith("generate.")]
    if bad:
        raise LmtuneError(f"generate: only generate.* settings can be given, got {bad[0]!r}")
    convs = [[Message("user", p)] for p in args.prompt]
    if args.input:
        convs += read_prompts(Path(args.input))
    if not convs:
        raise LmtuneError("generate: give --prompt TEXT or --input FILE")
    gen = Generator(args.model)
    settings = load_config(None, args.overrides).generate if args.overrides else None
    texts = gen.generate(convs, settings, progress=args.output is not None)
    rows = []
    for conv, text in zip(convs, texts):
        row = {"prompt": conv[-2].content if conv[-1].role == "assistant" else conv[-1].content,
               "text": text}
        if conv[-1].role == "assistant" and len(conv) > 1:
            row["reference"] = conv[-1].content
        rows.append(row)
    if args.output:
        write_jsonl(Path(args.output), rows)
        print(f"wrote {len(rows)} generations to {args.output}", file=sys.stderr)
    else:
        for r in rows:
            print(r["text"] if len(rows) == 1 else json.dumps(r, ensure_ascii=False))
    return 0






def cmd_predict(args) -> int:
    from lmtune.infer.predict import Predictor

    low_memory(args)
    clf = Predictor(args.run_dir)
    texts = list(args.texts)
    if args.input:
        texts += read_texts(Path(args.input), clf)
    if not texts:
        raise LmtuneError("predict: give texts as arguments or --input FILE")
    rows = [{"text": t, **p} for t, p in zip(texts, clf.predict(texts))]
    if args.output:
        write_jsonl(Path(args.output), rows)
        print(f"wrote {len(rows)} predictions to {args.output}", file=sys.stderr)
    elif args.jsonl:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
    else:
        print_predictions(rows, clf.label_names)
    return 0




def cmd_export(args) -> int:
    from lmtune.export import export_run

    report = export_run(args.run_dir, args.out, args.merge, args.format)
    parity = report["parity"]
    print(f"wrote {args.out} ({report['format']}"
          f"{', adapter merged' if report['merged'] else ''}); parity on "
          f"{parity['rows']} rows: max |logit difference| {parity['max_abs_logit_diff']:.2e} "
          f"(limit {report['limit']:.0e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a job's run dir says, in the fine-tuning API's terms: metrics.jsonl rows as events,
checkpoints, trained tokens."""
from __future__ import annotations

import json
from pathlib import Path

from lmtune.serve.store import Store


def metrics_events(store: Store, job_id: str, run_dir: Path, seen: int) -> int:
    """Add an event for each metrics.jsonl row past the first `seen`; return the rows read.
    Each row's event is keyed by its split and step, so a row read again (after a resume
    rewound the file) adds nothing."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return seen
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if len(lines) < seen:  # a resume rewound it
        seen = 0
    for line in lines[seen:]:
        try:
            row = json.loads(line)
        except ValueError:
            return seen  # a line being written: read it next time
        seen += 1
        if "step" not in row:
            continue
        split = row.get("split", "train")
        data = {"step": row["step"], **{k: v for k, v in row.items()
                                        if isinstance(v, (int, float)) and k != "step"}}
        if split == "train":
            message = f"Step {row['step']}: training loss={row.get('loss', float('nan')):.4f}"
            data = {"step": row["step"], "train_loss": row.get("loss"), **data}
        else:
            message = f"Step {row['step']}: {split} loss={row.get('loss', float('nan')):.4f}"
            data = {"step": row["step"], f"{_short(split)}_loss": row.get("loss"), **data}
        store.add_event(job_id, message, data=data, key=f"{split}-{row['step']}")
    return seen


def _short(split: str) -> str:
    return {"validation": "valid"}.get(split, split)


def trained_tokens(run_dir: Path) -> int | None:
    """Tokens the training steps processed (all epochs), from summary.json."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        return round(summary["tokens_per_second"] * summary["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoints(run_dir: Path, job: dict) -> list[dict]:
    """The run's saved checkpoints, newest first, with the losses logged at their steps."""
    rows = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            key = "valid_loss" if row.get("split") == "validation" else \
                "train_loss" if "split" not in row else None
            if key and "loss" in row:
                rows.setdefault(row["step"], {})[key] = row["loss"]
    out = []
    for ckpt in sorted((run_dir / "checkpoints").glob("step-*"), reverse=True):
        step = int(ckpt.name.removeprefix("step-"))
        out.append({"id": f"ftckpt-{job['id'][6:]}-{step}", "object":
                    "fine_tuning.job.checkpoint", "created_at": int(ckpt.stat().st_mtime),
                    "fine_tuning_job_id": job["id"], "step_number": step,
                    "fine_tuned_model_checkpoint": f"{job_model_name(job)}:ckpt-step-{step}",
                    "metrics": {"step": step, **rows.get(step, {})}})
    return out


def job_model_name(job: dict) -> str:
    """`ft:BASE:lmtune:SUFFIX:JOBID`, with no `/` (a hub id's is made `-`)."""
    req = job["request"]
    base = req["model"].replace("/", "-")
    return f"ft:{base}:lmtune:{req.get('suffix') or ''}:{job['id']}"

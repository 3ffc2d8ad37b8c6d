"""`lmtune export RUN OUT [--merge] [--format hf|onnx]`: a tuned model leaves lmtune.

    hf            the run's model dir as it is: a plain HF model dir, or a PEFT adapter dir
                  (with the base config and tokenizer) that plain peft loads
    hf --merge    a plain HF model dir with the adapter folded into fp32 base weights: loads
                  with `AutoModelFor...` and no peft
    onnx          model.onnx (adapter merged; dynamic batch and sequence axes) beside the
                  tokenizer and config, for onnxruntime and the runtimes that read ONNX

Every export loads what it wrote the way its users will (transformers without peft, or
onnxruntime), runs a few rows through it and through the run as lmtune loads it, and writes
the largest logit difference into OUT/export.json. Past the limit (fp32: 1e-4 for HF, 1e-3
for ONNX) it is an error and OUT is not written.
"""
from __future__ import annotations

import inspect
import json
import shutil
import sys
from pathlib import Path

import torch

from lmtune.errors import LmtuneError
from lmtune.rundir import atomic_save_dir, open_run

LIMITS = {"hf": 1e-4, "onnx": 1e-3}
# A few rows of different lengths (the batch is padded, so the mask matters too).
SAMPLE = ["a gripping, beautifully shot film", "tedious",
          "the plot was thin but the actors made every scene worth watching twice",
          "Summarize: the cat sat on the mat."]


def export_run(run_dir: str | Path, out: str | Path, merge: bool = False,
               fmt: str = "hf") -> dict:
    """Write the export into `out` (which must not hold anything yet); returns export.json."""
    out = Path(out)
    if fmt not in LIMITS:
        raise LmtuneError(f"--format: must be hf or onnx; got {fmt!r}")
    if out.exists() and any(out.iterdir()):
        raise LmtuneError(f"{out}: exists and is not empty; choose a new directory")
    run = open_run(run_dir)
    task = run.task
    adapter = (run.model_dir / "adapter_config.json").exists()
    if fmt == "onnx" and not task.exports_onnx:
        raise LmtuneError(f"--format onnx: covers models whose forward takes the input ids "
                          f"alone (classifiers, causal and masked LMs), not task={task.name}")
    if adapter and (merge or fmt == "onnx") and not run.mergeable:
        raise LmtuneError(f"{run_dir}: method={run.config.method} cannot be merged into its "
                          "base; export it without --merge (the adapter dir)")
    folded = adapter and (merge or fmt == "onnx")
    model, tokenizer = run.load(attention="eager")
    batch = sample_batch(tokenizer)
    want = logits(model, batch)  # the run as lmtune loads it
    if folded:  # into the dequantized base where training quantized it
        model = run.load(attention="eager", merge=True)[0]
    report = {"source": str(run_dir), "format": fmt, "merged": folded, "task": task.name,
              "limit": LIMITS[fmt]}

    def write(tmp: Path) -> None:
        if fmt == "onnx":
            got = write_onnx(model, tokenizer, batch, tmp)
        elif adapter and not merge:
            shutil.copytree(run.model_dir, tmp, dirs_exist_ok=True)
            got = logits(_reload_adapter(run, tmp), batch)
        else:
            got = write_hf(model, tokenizer, task.model_class, batch, tmp)
        diff = float((got - want).abs().max())
        report["parity"] = {"rows": len(SAMPLE), "max_abs_logit_diff": diff}
        if not diff <= LIMITS[fmt]:
            raise LmtuneError(f"export parity failed: the exported model's logits differ from "
                              f"the run's by {diff:.2e} (limit {LIMITS[fmt]:.0e}); nothing "
                              "was written")
        (tmp / "export.json").write_text(json.dumps(report, indent=2) + "\n")

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_dir(out, write)
    return report


def sample_batch(tokenizer) -> dict[str, torch.Tensor]:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(SAMPLE, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def no_cache(model) -> dict:
    """`use_cache=False` for models whose forward takes it (decoders): no KV cache is built
    (nor traced into the ONNX graph) for a single forward pass."""
    return {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters \
        else {}


def logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch, **no_cache(model)).logits.float()


def write_hf(model, tokenizer, auto_class: str, batch, tmp: Path) -> torch.Tensor:
    """A plain HF dir; reloaded with transformers alone for the parity check."""
    import transformers

    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    again = getattr(transformers, auto_class).from_pretrained(tmp, dtype=torch.float32,
                                                              attn_implementation="eager")
    return logits(again, batch)


def _reload_adapter(run, tmp: Path):
    """The copied adapter dir, applied to the run's base as a user would with peft."""
    from lmtune.models.io import load_saved

    return load_saved(tmp, run.base, run.trust, "eager", run.task.model_class,
                      run.config.cache_dir, run.config.quantization, run.task.head_modules)[0]


class _Logits(torch.nn.Module):
    """(input_ids, attention_mask) → logits: the graph ONNX holds."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          **no_cache(self.model)).logits


def write_onnx(model, tokenizer, batch, tmp: Path) -> torch.Tensor:
    """model.onnx with dynamic batch and sequence axes, run in onnxruntime for parity."""
    try:
        import onnxruntime
    except ImportError:
        raise LmtuneError("--format onnx needs onnx, onnxscript and onnxruntime: "
                          "pip install 'lmtune[onnx]'") from None
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
    print("exporting to ONNX (torch.export; takes a while)", file=sys.stderr)
    torch.onnx.export(_Logits(model.eval()), (batch["input_ids"], batch["attention_mask"]),
                      str(tmp / "model.onnx"), dynamo=True, verbose=False,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_shapes={"input_ids": dims, "attention_mask": dims})
    model.config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    session = onnxruntime.InferenceSession(str(tmp / "model.onnx"))
    got = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    return torch.from_numpy(got).float()

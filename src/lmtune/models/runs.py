"""A finished run dir as a model: `model=runs/sft_x` starts a new run (DPO after SFT, SFT
after continued pretraining) from what that run trained, and `lmtune generate runs/dpo_x`
finds the chain of bases back to the first.

A full fine-tune's `model/` is a plain HF dir and is used as it is. An adapter run is merged
into its base once, in fp32 (a quantized base is not merged into: the update would be
rounded away), into the cache, under a name keyed by the adapter's bytes, so a retrained run
gets a new merge. A new adapter then trains on top of the merged weights: with it switched
off the model is the run's model, not the base that run started from, which is what a DPO
reference must be.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lmtune.errors import LmtuneError

# peft types that add inputs (virtual tokens, prefixes) rather than weight updates
PROMPT_LEARNING = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "model").is_dir()


def run_model_dir(run: Path, cache_dir: str = "") -> Path:
    """The plain HF model dir that holds what `run` trained (merged into the cache for an
    adapter run)."""
    from lmtune.config import cache_root
    from lmtune.models.load import build_once

    model_dir = run / "model"
    if not (model_dir / "config.json").exists():
        raise LmtuneError(f"model {str(run)!r}: the run has no saved model ({model_dir} has no "
                          "config.json); did it finish?")
    adapter_config = model_dir / "adapter_config.json"
    if not adapter_config.exists():
        return model_dir
    peft_type = json.loads(adapter_config.read_text()).get("peft_type")
    if peft_type in PROMPT_LEARNING:
        raise LmtuneError(f"model {str(run)!r}: a {peft_type.lower()} run adds virtual tokens, "
                          "which cannot be folded into the weights, so a new run cannot start "
                          "from it; retrain it with a weight method (lora, full, ...)")
    digest = hashlib.sha256(adapter_config.read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        digest.update(f.read_bytes())
    dest = cache_root(cache_dir) / "models" / f"merged-{run.resolve().name}-" \
                                              f"{digest.hexdigest()[:12]}"
    return build_once(dest, lambda out: merge_run(run, out, cache_dir),
                      f"merging the {peft_type.lower()} adapter of {run} into its base (once)")


def merge_run(run: Path, out: Path, cache_dir: str) -> None:
    """Save `run`'s adapter folded into its fp32 base as a plain HF dir at `out`."""
    import yaml

    from lmtune.models.io import load_saved

    config = yaml.safe_load((run / "config.yaml").read_text())
    arch = (json.loads((run / "model" / "config.json").read_text()).get("architectures")
            or [""])[0]
    if not arch:
        raise LmtuneError(f"{run}/model/config.json: names no architecture to load it as")
    model, tokenizer = load_saved(run / "model", config["model"],
                                  bool(config.get("trust_remote_code")), "sdpa",
                                  auto_class=arch, cache_dir=cache_dir, merge=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

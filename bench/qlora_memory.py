"""Where does QLoRA's 4-bit base pay? LoRA and QLoRA side by side on a decoder whose weights
dominate a step's memory, each in its own child process.

    .venv/bin/python bench/qlora_memory.py                 # ~0.8B-parameter Llama
    .venv/bin/python bench/qlora_memory.py --layers 4      # a smaller one

No model of that size ships with this project's packages, so the decoder is a Llama with
SmolLM2's tokenizer and random weights, saved once in bf16 (peak memory and time do not
depend on the values). Each child runs `lmtune train task=clm` with `--steps` optimizer
steps of 2 review texts (Rotten Tomatoes) up to 128 tokens, validates and tests on 16
texts each. LoRA holds the frozen base's linear layers in bf16 after loading it in fp32;
QLoRA loads it as 4-bit NF4 (bitsandbytes). The peer of the QLoRA row is LoRA in the same
run; the last line holds the ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import as_lmtune_command  # noqa: E402
from common import spawn as common_spawn  # noqa: E402


def build_model(root: Path, layers: int) -> Path:
    """A random Llama (hidden 2048, 16 heads, 4 KV heads, MLP 5632, tied embeddings) with
    SmolLM2's tokenizer, saved in bf16; and small data files."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lmtune.data.builtin import rotten_tomatoes
    from lmtune.models.load import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=5632,
                         num_hidden_layers=layers, num_attention_heads=16,
                         num_key_value_heads=4, tie_word_embeddings=True,
                         max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    texts = [r["text"] for r in rotten_tomatoes(seed=42)["train"].rows]
    for name, part in (("train", texts[:64]), ("validation", texts[64:80]),
                       ("test", texts[80:96])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                    for t in part))
    return root


def run_method(method: str, root: Path, steps: int) -> dict:
    as_lmtune_command()
    from lmtune.config import load_config
    from lmtune.train import train

    out = root / f"run-{method}"
    cfg = load_config(None, [
        "task=clm", f"model={root / 'model'}", f"method={method}", f"output_dir={out}",
        *(f"data.{s}={root / s}.jsonl" for s in ("train", "validation", "test")),
        f"train.max_steps={steps}", "train.batch_size=2", "train.max_length=128",
        "train.log_every=1", "eval.batch_size=8"])
    result = train(cfg, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    return {"method": method, "params": summary["total_params"],
            "trainable": summary["trainable_params"], "seconds": result.train_seconds,
            "seconds_per_step": result.train_seconds / steps,
            "peak_rss_mb": summary["peak_memory_mb"], "test_loss": result.test["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_method(args.child, Path(args.root), args.steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = build_model(Path(tmp), args.layers)
        rows = [common_spawn(__file__, m, ["--root", str(root), "--steps", str(args.steps)])
                for m in ("lora", "qlora")]
    for r in rows:
        print(json.dumps(r))
    lora, qlora = rows
    print(f"\n{lora['params'] / 1e9:.2f}B-parameter Llama, {args.steps} steps of 2 x 128 "
          "tokens:")
    print(f"  {'method':<7}{'trainable':>12}{'s/step':>9}{'peak MB':>9}{'test loss':>11}")
    for r in rows:
        print(f"  {r['method']:<7}{r['trainable']:>12,}{r['seconds_per_step']:>9.2f}"
              f"{r['peak_rss_mb']:>9.0f}{r['test_loss']:>11.4f}")
    print(f"qlora_rss_ratio={qlora['peak_rss_mb'] / lora['peak_rss_mb']:.2f} "
          f"qlora_speed={lora['seconds_per_step'] / qlora['seconds_per_step']:.2f}")


if __name__ == "__main__":
    main()

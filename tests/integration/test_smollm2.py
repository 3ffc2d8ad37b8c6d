"""Integration on the real SmolLM2-135M-Instruct (converted once from the shipped GGUF)."""
import json

import pytest

from lmtune.cli import main
from lmtune.data.formats import Message
from lmtune.data.templates import end_of_turn_ids, tokenize_conversation
from lmtune.models.load import resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model("smollm2")  # the user's cache: converted once, then reused


def test_smollm2_masks_exactly_the_assistant_turns(smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    conv = [Message("user", "Translate: good morning"), Message("assistant", "buenos días"),
            Message("user", "And: thank you"), Message("assistant", "¡Muchas gracias!")]
    t = tokenize_conversation(tok, conv, "assistant", 512)
    trained = tok.decode([i for i, m in zip(t.input_ids, t.trained) if m])
    assert trained == "buenos días<|im_end|>¡Muchas gracias!<|im_end|>"
    assert tok.decode(t.input_ids) == tok.apply_chat_template(
        [m.__dict__ for m in conv], tokenize=False)  # one rendering, as at inference
    assert end_of_turn_ids(tok) == {tok.convert_tokens_to_ids("<|im_end|>")}


def test_smollm2_lora_sft_steps_then_generates(smollm2, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--quiet", "task=sft", "model=smollm2", "method=lora",
                 "data.train=aclsum", "data.max_samples=12", "train.max_steps=2",
                 "train.batch_size=2", "train.max_length=256", "train.log_every=1",
                 "eval.generate_samples=2", "generate.max_new_tokens=12",
                 f"output_dir={out}"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "lr" in r]
    assert len(losses) == 2 and all(0 < x < 10 for x in losses)
    val = [r for r in rows if r.get("split") == "validation"]
    assert val and 0 < val[-1]["rougeL"] < 100  # validation generated with the real model
    assert (out / "model" / "adapter_model.safetensors").exists()
    assert main(["generate", str(out), "--prompt", "Say hello.",
                 "generate.max_new_tokens=8"]) == 0


def test_bible_en_es_builtin_reads_the_sword_modules():
    from lmtune.data.instructions import SWORD_DIR, SWORD_MODULES, bible_en_es

    missing = [m for m in SWORD_MODULES if not (SWORD_DIR / "mods.d" / f"{m}.conf").exists()]
    if missing:
        pytest.skip(f"Debian sword modules {missing} not installed (make setup installs "
                    "sword-text-kjv and sword-text-sparv where it runs as root with apt)")
    splits = bible_en_es(seed=42)
    assert {k: len(v.rows) for k, v in splits.items()} == \
        {"validation": 200, "test": 200, "train": 30684}
    seen = {r["input"] for r in splits["train"].rows}
    assert not any(r["input"] in seen for r in splits["test"].rows[:50])  # held out
    row = splits["test"].rows[0]
    assert row["instruction"].startswith("Translate") and row["output"] and row["input"]


def test_sword_reading_decompresses_each_book_once():
    """pysword decompresses a verse's whole book for every verse; read in order, each of the
    66 books' blocks (one per testament index) must be decompressed once, not 31k times."""
    from lmtune.data.instructions import SWORD_DIR, SWORD_MODULES, _read_in_order

    if not (SWORD_DIR / "mods.d" / f"{SWORD_MODULES[0]}.conf").exists():
        pytest.skip("Debian sword module not installed (make setup installs it as root)")
    from pysword.modules import SwordModules

    modules = SwordModules(str(SWORD_DIR))
    modules.parse_modules()
    bible = modules.get_bible_from_module(SWORD_MODULES[0])
    calls = []
    decompress = bible._decompress
    bible._decompress = lambda data: calls.append(1) or decompress(data)
    verses = _read_in_order(bible)
    assert len(verses) > 31_000
    assert len(calls) <= 70

"""Integration on the real shipped MiniLM and Rotten Tomatoes (small subsets, few steps)."""
import json
import time

import pytest
import torch

from lmtune.config import load_config
from lmtune.data.builtin import rotten_tomatoes
from lmtune.data.readers import from_lists
from lmtune.errors import LmtuneError
from lmtune.infer.predict import Predictor
from lmtune.models.load import load_classifier, resolve_model
from lmtune.train import train
from tests.methods import case, names

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rt_subset():
    rows = rotten_tomatoes(seed=42)["train"].rows[:320]
    return from_lists({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]})


@pytest.mark.parametrize("method", names("bert-classify"))
def test_minilm_trains_saves_and_reloads(rt_subset, tmp_path, method):
    cfg = load_config(None, [f"method={method}", f"output_dir={tmp_path}/run",
                             "train.max_steps=6", "train.batch_size=16", "train.threads=1",
                             "train.log_every=1", "train.lr=1e-4"])
    result = train(cfg, train_table=rt_subset, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "split" not in r]) == 6
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert result.test is not None and 0 <= result.test["accuracy"] <= 1
    model_dir = tmp_path / "run" / "model"
    if case(method).method.adapter:
        assert (model_dir / "adapter_model.safetensors").exists()
        adapter = json.loads((model_dir / "adapter_config.json").read_text())
        peft_name = {"dora": "LORA", "qlora": "LORA", "prompt": "PROMPT_TUNING",
                     "ptuning": "P_TUNING", "prefix": "PREFIX_TUNING"}
        assert adapter["peft_type"] == peft_name.get(method, method.upper())
    else:
        assert (model_dir / "model.safetensors").exists()
    clf = Predictor(tmp_path / "run")
    texts = ["An utterly charming, beautifully acted film.", "A tedious, lifeless mess."]
    first, second = clf(texts), clf(texts)
    assert first == second and {p["label"] for p in first} <= {"fresh", "rotten"}


def test_minilm_label_map_in_config():
    model = load_classifier(resolve_model("minilm"), ["fresh", "rotten"], False)
    assert model.config.id2label == {0: "fresh", 1: "rotten"}
    assert model.config.num_labels == 2


def test_hub_id_offline_fails_fast_and_clearly():
    start = time.monotonic()
    with pytest.raises(LmtuneError, match="hub"):
        load_classifier("lmtune-nonexistent-org/no-such-model", ["a", "b"], False)
    assert time.monotonic() - start < 30


def test_trust_remote_code_is_off_by_default():
    assert load_config().trust_remote_code is False


def test_minilm_sigkill_then_resume_is_exact(tmp_path, capsys):
    """Real MiniLM, default precision (bf16 autocast where the CPU has it), killed with
    SIGKILL at a random step, resumed: the README quotes the line this test prints."""
    import random
    import signal
    import subprocess
    import sys

    from lmtune.cli import main
    from tests.conftest import write_csv
    from tests.integration.test_resume import assert_same_run, run_until

    splits = rotten_tomatoes(seed=42)
    paths = {}
    for name, n in (("train", 640), ("validation", 200), ("test", 200)):
        rows = [{"text": r["text"], "label": r["label"]} for r in splits[name].rows[:n]]
        paths[name] = write_csv(tmp_path / f"{name}.csv", rows)
    args = [f"data.{k}={v}" for k, v in paths.items()] + [
        "train.max_steps=30", "train.batch_size=16", "train.log_every=1",
        "train.checkpoint_every=10", "train.eval_every=15",
        "train.dropout=null"]  # MiniLM's own dropout draws from the RNG, as resume must restore
    assert main(["train", "--quiet", *args, f"output_dir={tmp_path / 'ref'}"]) == 0
    kill_at = random.Random().randrange(12, 27)  # after the first checkpoint (step 10)
    out = tmp_path / "run"
    done = run_until([*args, f"output_dir={out}"], out, kill_at, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL and not (out / "model").exists()
    resumed = subprocess.run([sys.executable, "-m", "lmtune", "resume", "--quiet", str(out)],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    worst = assert_same_run(tmp_path / "ref", out)
    line = next(x for x in resumed.stderr.splitlines() if x.startswith("resumed from"))
    with capsys.disabled():
        print(f"\nMiniLM: signalled at step {kill_at}, {line.split('/')[-1]}; "
              f"max abs weight difference {worst:g}; per-step losses and test metrics equal")

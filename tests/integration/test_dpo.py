"""task=dpo on a tiny random Llama: TRL's formulas, the reference model's traps, packing,
every method, resume, eval."""
import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmtune.cli import main
from lmtune.config import load_config
from lmtune.data.preference import PairEncoded, collate_pairs
from lmtune.prepare import prepare
from lmtune.tasks import get_task
from lmtune.models.logprobs import sequence_logps
from lmtune.tasks.dpo import reference_logps
from tests.conftest import CHAT_WORDS, metric_rows, train_tracked
from tests.methods import case, names

DPO = ["task=dpo", "train.precision=fp32", "train.threads=1", "train.batch_size=8",
       "train.warmup=0", "train.log_every=1", "train.max_length=64", "train.min_steps=0",
       "eval.batch_size=16"]


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompt "repeat: w1 w2 ...": both answers repeat the words, the chosen one opens
    with "hello", the rejected one with "world" and in reverse (a preference a tiny model
    learns in a few steps, and that holds on unseen prompts)."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        words = rng.sample(CHAT_WORDS[:10], rng.randint(2, 6))
        rows.append({"prompt": "repeat: " + " ".join(words),
                     "chosen": "hello " + " ".join(words),
                     "rejected": "world " + " ".join(reversed(words))})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def pairs_jsonl(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", pair_rows(120))


def args(model, data, out, *extra):
    return [*DPO, f"model={model}", f"data.train={data}", f"output_dir={out}", *extra]


def steps(run_dir):
    return [r for r in metric_rows(run_dir) if "lr" in r]


# ---------------------------------------------------------------- TRL's formulas


def trl_batch(model, ref, tok, rows, loss_type, tmp_path):
    """TRL's DPOTrainer on `rows`: its first batch and its loss and metrics on it."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    trainer = DPOTrainer(model=model, ref_model=ref, processing_class=tok,
                         train_dataset=Dataset.from_list(rows),
                         args=DPOConfig(str(tmp_path / "trl"), beta=0.1, report_to=[],
                                        use_cpu=True, loss_type=[loss_type],
                                        per_device_train_batch_size=len(rows)))
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer._compute_loss(trainer.model, batch, False).item()
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    # The trainer left accelerate's process-wide state set up its way (mixed precision);
    # the runs of later tests must build their own.
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    return batch, loss, metrics


def as_pairs(batch) -> PairEncoded:
    """TRL's token rows ([chosen; rejected], right-padded) as lmtune's pairs."""
    ids, att, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    half = len(ids) // 2
    rows = [ids[i, :int(att[i].sum())].numpy().astype(np.int32) for i in range(len(ids))]
    prompt = [int(comp[i].argmax()) for i in range(len(ids))]
    assert prompt[:half] == prompt[half:]  # both halves of a pair share the prompt
    return PairEncoded(rows[:half], rejected_ids=rows[half:], prompt_lengths=prompt[:half])


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_loss_and_rewards_equal_trl_dpo_trainer(tiny_llama, tmp_path, loss):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    policy = AutoModelForCausalLM.from_pretrained(tiny_llama)
    torch.manual_seed(1)
    with torch.no_grad():  # policy != reference, so the rewards are not all 0
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama)
    batch, trl_loss, trl = trl_batch(policy, ref, tok, pair_rows(6, seed=3), loss, tmp_path)
    pairs = as_pairs(batch)
    ours = collate_pairs(pairs, list(range(len(pairs))), tok.pad_token_id)
    task = get_task("dpo").for_run(load_config(None, ["task=dpo", f"dpo.loss={loss}"]))
    with torch.no_grad():
        losses, chosen, rejected = task.pair_losses(
            sequence_logps(policy, ours, torch.no_grad), sequence_logps(ref, ours, torch.no_grad),
            ours["completion_tokens"])
    assert len(set(ours["completion_tokens"].tolist())) > 1  # lengths differ: IPO's mean
    assert losses.mean().item() == pytest.approx(trl_loss, rel=1e-5, abs=1e-5)  # IPO's ~24
    assert chosen.mean().item() == pytest.approx(trl["rewards/chosen"], abs=1e-5)
    assert rejected.mean().item() == pytest.approx(trl["rewards/rejected"], abs=1e-5)
    assert (chosen - rejected).mean().item() == pytest.approx(trl["rewards/margins"], abs=1e-5)
    assert (chosen > rejected).float().mean().item() == trl["rewards/accuracies"]
    assert 0 < trl["rewards/accuracies"] < 1 and abs(trl["rewards/margins"]) > 1e-3


def test_simpo_equals_trl_cpo_loss():
    """SimPO as TRL's CPO trainer computes it (loss_type=simpo, without CPO's NLL term)."""
    from trl.experimental.cpo import CPOTrainer

    torch.manual_seed(0)
    policy, tokens = -torch.rand(8) * 40, torch.tensor([3., 9, 4, 12, 7, 3, 5, 8])
    task = get_task("dpo").for_run(load_config(None, ["task=dpo", "dpo.loss=simpo",
                                                      "dpo.beta=2", "dpo.simpo_gamma=0.7"]))
    losses, chosen, rejected = task.pair_losses(policy, None, tokens)
    trl = SimpleNamespace(alpha=0.0, beta=2.0, simpo_gamma=0.7, label_smoothing=0.0,
                          loss_type="simpo", accelerator=SimpleNamespace(device="cpu"))
    avg = policy / tokens
    want, want_chosen, want_rejected = CPOTrainer.cpo_loss(trl, avg[:4], avg[4:])
    torch.testing.assert_close(losses, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(chosen, want_chosen, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rejected, want_rejected, atol=1e-6, rtol=1e-6)


def test_packed_pairs_score_as_unpacked(tiny_llama):
    """Several sequences in one row (position ids restart at each) give each completion the
    same log-probability as one sequence a row with padding."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 200, n).astype(np.int32) for n in (9, 14, 5, 21, 12, 7)]
    pairs = PairEncoded(rows[:3], rejected_ids=rows[3:], prompt_lengths=[3, 4, 2])
    idx = [0, 1, 2]
    unpacked = collate_pairs(pairs, idx, 0)
    pairs.pack_to = 40
    packed = collate_pairs(pairs, idx, 0)
    assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(model, packed, torch.no_grad),
                                   sequence_logps(model, unpacked, torch.no_grad),
                                   atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- training


def test_the_first_step_starts_at_log_2_and_the_preference_is_learned(tiny_llama, pairs_jsonl,
                                                                       tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--quiet", *args(tiny_llama, pairs_jsonl, out, "train.lr=3e-3",
                                           "train.max_steps=40", "train.eval_every=20")]) == 0
    rows = steps(out)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    assert rows[0]["rewards/chosen"] == pytest.approx(0, abs=1e-6)
    val = [r for r in metric_rows(out) if r.get("split") == "validation"]
    assert val[-1]["loss"] < math.log(2) - 0.05 and val[-1]["rewards/margins"] > 0
    assert val[-1]["rewards/accuracies"] > 0.8
    test = json.loads((out / "eval.json").read_text())["test"]
    assert test["preference_accuracy"] == test["rewards/accuracies"] > 0.8
    assert json.loads((out / "summary.json").read_text())["best"]["metric"] == "loss"


@pytest.mark.parametrize("method", names("llama-sft"))
def test_every_method_trains_under_dpo(tiny_llama, pairs_jsonl, tmp_path, method):
    cfg = load_config(None, args(tiny_llama, pairs_jsonl, tmp_path / "run", "train.max_steps=8",
                                 *case(method).config()))
    s, result, base, unchanged = train_tracked(cfg)
    assert not unchanged  # every trainable tensor moved
    rows = steps(tmp_path / "run")
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert result.test["loss"] < base["loss"]  # held-out pairs


def test_precomputed_reference_equals_the_live_one(tiny_llama, pairs_jsonl, tmp_path):
    runs = {}
    for live in (False, True):
        out = tmp_path / f"live-{live}"
        assert main(["train", "--quiet", *args(
            tiny_llama, pairs_jsonl, out, "method=lora", "lora.dropout=0", "train.lr=1e-2",
            "train.max_steps=6", f"dpo.precompute_ref={not live}")]) == 0
        runs[live] = metric_rows(out)
    for a, b in zip(runs[False], runs[True], strict=True):
        for k in a.keys() - {"samples_per_s", "tokens_per_s"}:
            assert a[k] == pytest.approx(b[k], abs=1e-5), k


def test_packing_trains_like_unpacked(tiny_llama, pairs_jsonl, tmp_path):
    runs = {}
    for packing in (False, True):
        out = tmp_path / f"packing-{packing}"
        assert main(["train", "--quiet", *args(tiny_llama, pairs_jsonl, out, "train.lr=3e-3",
                                               "train.max_steps=6", "train.max_length=128",
                                               f"data.packing={packing}")]) == 0
        runs[packing] = [r["loss"] for r in steps(out)]
    assert runs[True] == pytest.approx(runs[False], abs=1e-4)
    report = json.loads((tmp_path / "packing-True" / "data_report.json").read_text())
    assert report["padding_packed"] < report["padding_unpacked"]


def test_dropout_is_off_in_policy_and_reference(tiny_llama, pairs_jsonl, tmp_path):
    with pytest.raises(Exception, match="dropout off"):
        load_config(None, ["task=dpo", "train.dropout=0.1"])
    cfg = load_config(None, args(tiny_llama, pairs_jsonl, tmp_path / "run", "method=lora",
                                 "lora.dropout=0.3", "train.dropout=null"))
    s = prepare(cfg)
    dropouts = [m.p for m in s.module.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and set(dropouts) == {0.0}  # LoRA's own dropout too
    s.logger.close()


def test_the_reference_of_a_run_started_from_sft_is_the_sft_model(tiny_llama, pairs_jsonl,
                                                                   chat_jsonl, tmp_path):
    """LoRA SFT, then LoRA DPO from that run: the reference (live, adapter off) is the SFT
    model, not the base it started from, so the first step's loss is log 2."""
    from lmtune.models.load import resolve_model
    from transformers import AutoModelForCausalLM

    sft = tmp_path / "sft"
    assert main(["train", "--quiet", "task=sft", f"model={tiny_llama}",
                 f"data.train={chat_jsonl}", f"output_dir={sft}", "method=lora",
                 "train.lr=3e-2", "train.max_steps=10", "train.precision=fp32",
                 "train.threads=1", "train.min_steps=0", f"cache_dir={tmp_path / 'cache'}",
                 "train.max_length=64"]) == 0
    out = tmp_path / "dpo"
    cfg = load_config(None, args(sft, pairs_jsonl, out, "method=lora", "lora.dropout=0",
                                 "dpo.precompute_ref=false", "train.lr=1e-2",
                                 f"cache_dir={tmp_path / 'cache'}"))
    s = prepare(cfg)
    merged = AutoModelForCausalLM.from_pretrained(resolve_model(str(sft), cfg.cache_dir))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    how = s.eval_settings()
    live = reference_logps(s.module, s.data["validation"], s.task, how)
    torch.testing.assert_close(live, reference_logps(merged, s.data["validation"], s.task, how),
                               atol=1e-5, rtol=1e-5)
    assert (live - reference_logps(base, s.data["validation"], s.task, how)).abs().max() > 0.1
    s.logger.close()
    assert main(["train", "--quiet", *args(sft, pairs_jsonl, out, "method=lora",
                                           "lora.dropout=0", "dpo.precompute_ref=false",
                                           "train.max_steps=3", "overwrite=true",
                                           f"cache_dir={tmp_path / 'cache'}")]) == 0
    assert steps(out)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_resume_after_a_crash_is_exact(tiny_llama, pairs_jsonl, tmp_path, monkeypatch):
    from tests.integration.test_resume import Crash, break_at, crash, rows

    extra = ["method=lora", "lora.dropout=0", "train.lr=1e-2", "train.max_steps=12",
             "train.eval_every=5", "train.checkpoint_every=4", "train.log_every=3"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main(["train", "--quiet", *args(tiny_llama, pairs_jsonl, ref, *extra)]) == 0
    # batches 1-8 score the reference (96 + 12 + 12 pairs, 16 a batch), then steps 1-5,
    # a validation batch, steps 6 and 7: a crash after the checkpoint of step 4, mid-window
    break_at(monkeypatch, 16, crash)
    with pytest.raises(Crash):
        main(["train", "--quiet", *args(tiny_llama, pairs_jsonl, out, *extra)])
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004"]
    assert main(["resume", "--quiet", str(out)]) == 0
    a, b = (load_file(d / "model" / "adapter_model.safetensors") for d in (ref, out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rows(ref) == rows(out)  # the reward figures of the interrupted window too


def test_eval_reports_preference_accuracy_for_the_tuned_and_the_base_model(
        tiny_llama, pairs_jsonl, tmp_path, capsys):
    from lmtune.infer.evaluate import evaluate_run

    out = tmp_path / "run"
    assert main(["train", "--quiet", *args(tiny_llama, pairs_jsonl, out, "method=lora",
                                           "lora.dropout=0", "train.lr=1e-2",
                                           "train.max_steps=30")]) == 0
    result, _ = evaluate_run(out, compare_base=True)
    tuned, base = result["test"], result["base"]["test"]
    saved = json.loads((out / "eval.json").read_text())["test"]
    assert tuned["preference_accuracy"] == pytest.approx(saved["preference_accuracy"])
    assert tuned["loss"] == pytest.approx(saved["loss"], abs=1e-5)
    assert "loss" not in base  # no reference for the base itself: the per-token definition
    assert tuned["preference_accuracy"] > base["preference_accuracy"]
    assert main(["eval", str(out), "--compare-base"]) == 0
    printed = capsys.readouterr().out
    assert "preference_accuracy" in printed and "rewards/margins" in printed


# ---------------------------------------------------------------- config


def test_a_live_reference_needs_an_adapter_to_switch_off():
    with pytest.raises(Exception, match="dpo.precompute_ref"):
        load_config(None, ["task=dpo", "method=full", "dpo.precompute_ref=false"])
    load_config(None, ["task=dpo", "method=full", "dpo.precompute_ref=false",
                       "dpo.loss=simpo"])  # no reference at all


def test_preference_data_is_refused_by_other_tasks_and_chat_data_by_dpo(
        tiny_llama, pairs_jsonl, chat_jsonl, tmp_path, capsys):
    assert main(["train", *args(tiny_llama, chat_jsonl, tmp_path / "a")]) == 2
    assert "prompt+chosen+rejected" in capsys.readouterr().err
    assert main(["train", "task=sft", f"model={tiny_llama}", f"data.train={pairs_jsonl}",
                 f"output_dir={tmp_path / 'b'}", "data.format=preference"]) == 2
    assert "for task=dpo" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------- several processes


@pytest.mark.parametrize("mode,method", [("ddp", "lora"), ("fsdp", "full"), ("zero3", "full")])
def test_two_processes_equal_one(tiny_llama, pairs_jsonl, tmp_path, mode, method):
    """Each rank scores the reference for the starting model before it is sharded; the
    loss, rewards and weights of 2 processes equal those of 1 with the same global batch."""
    import subprocess
    import sys

    from tests.integration.test_multiprocess import SHARDED, needs

    needs(mode)
    base = [*args(tiny_llama, pairs_jsonl, "x"), f"method={method}", "lora.dropout=0",
            "train.lr=3e-3", "train.max_steps=4", "train.eval_every=2",
            "train.group_by_length=false"]
    base = [a for a in base if not a.startswith("output_dir=")]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--quiet", *base, "train.grad_accum=2", f"output_dir={one}"]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "lmtune", "train", "--nproc", "2", "--quiet", *base,
         "train.grad_accum=1", "train.batch_size=8", *SHARDED.get(mode, []),
         f"output_dir={two}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ma, mb = metric_rows(one), metric_rows(two)
    assert len(ma) == len(mb) and any("rewards/margins" in r for r in ma)
    for ra, rb in zip(ma, mb):
        for k in ra.keys() - {"samples_per_s", "tokens_per_s", "split"}:
            assert ra[k] == pytest.approx(rb[k], abs=1e-5), (k, ra, rb)
    name = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    wa, wb = load_file(one / "model" / name), load_file(two / "model" / name)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_a_run_dir_as_model_merges_its_adapter_once_and_refuses_virtual_tokens(
        tiny_llama, chat_jsonl, tmp_path, capsys):
    from lmtune.errors import LmtuneError
    from lmtune.models.load import resolve_model

    common = ["task=sft", f"model={tiny_llama}", f"data.train={chat_jsonl}", "train.max_steps=2",
              "train.precision=fp32", "train.threads=1", "train.min_steps=0",
              "train.max_length=64", "prompt.virtual_tokens=4"]
    for method in ("full", "lora", "prompt"):
        assert main(["train", "--quiet", *common, f"method={method}",
                     f"output_dir={tmp_path / method}"]) == 0
    cache = str(tmp_path / "cache")
    assert resolve_model(str(tmp_path / "full"), cache) == str(tmp_path / "full" / "model")
    merged = resolve_model(str(tmp_path / "lora"), cache)
    assert "merging the lora adapter" in capsys.readouterr().err
    assert resolve_model(str(tmp_path / "lora"), cache) == merged  # once
    assert "merging" not in capsys.readouterr().err
    assert (tmp_path / "cache" / "models").is_dir() and merged.startswith(cache)
    from transformers import AutoModelForCausalLM

    from lmtune.rundir import open_run

    peft_model = open_run(tmp_path / "lora").load(attention="sdpa")[0]
    plain = AutoModelForCausalLM.from_pretrained(merged, attn_implementation="sdpa").eval()
    ids = torch.tensor([[5, 17, 42, 9, 33, 2]])
    with torch.no_grad():  # what the run trained, folded into plain weights
        torch.testing.assert_close(plain(ids).logits, peft_model(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(LmtuneError, match="virtual tokens"):
        resolve_model(str(tmp_path / "prompt"), cache)


def test_a_precomputed_reference_is_used_and_no_reference_runs_during_training(
        tiny_llama, pairs_jsonl, tmp_path, monkeypatch):
    """TRL#1962 (the setting silently ignored) and TRL PR#6443 (validation scored against
    the trained model): every split carries the reference's sums before the first step,
    and neither training nor validation switches the adapter off again."""
    import lmtune.tasks.dpo as dpo
    from lmtune.train import finish, fit

    cfg = load_config(None, args(tiny_llama, pairs_jsonl, tmp_path / "run", "method=lora",
                                 "train.max_steps=4", "train.eval_every=2"))
    s = prepare(cfg)
    assert all(split.ref is not None and split.ref.shape == (len(split), 2)
               for split in s.data.values())
    calls = []
    real = dpo.reference_view
    monkeypatch.setattr(dpo, "reference_view", lambda m: calls.append(1) or real(m))
    finish(s, fit(s, progress=False))
    assert calls == []


def test_a_capped_validation_keeps_both_halves_of_each_pair(tiny_llama, pairs_jsonl, tmp_path):
    s = prepare(load_config(None, args(tiny_llama, pairs_jsonl, tmp_path / "run",
                                       "eval.max_samples=5")))
    val = s.data["validation"]
    assert len(val) == len(val.rejected_ids) == len(val.prompt_lengths) == 5
    assert val.ref.shape == (5, 2)  # the reference is scored on the sample
    assert all(list(c[:p]) == list(r[:p]) for c, r, p in
               zip(val.input_ids, val.rejected_ids, val.prompt_lengths))
    s.logger.close()

"""The contract every fine-tuning method keeps, checked over one table of (method, tiny model)
cases (tests/methods.py × a tiny BERT classifier, a tiny Llama chat model and a tiny T5):

- training moves every trainable tensor and no frozen one, and the loss stays finite;
- a save/load round trip through the run dir gives exactly the trained model's outputs;
- an adapter merged into its base gives the unmerged outputs;
- a disabled adapter gives the base model's outputs;
- holding frozen linear weights in bf16 changes no number under bf16 autocast.
"""
from __future__ import annotations

import contextlib
import json

import pytest
import torch

from lmtune.config import load_config
from lmtune.methods import METHODS, apply_method
from lmtune.models.params import hold_frozen_linears_in_bf16
from lmtune.prepare import prepare
from lmtune.rundir import open_run
from lmtune.tasks import get_task
from lmtune.train import finish, fit
from tests.methods import CASES, case, names

MODELS = {  # name: (model fixture, data fixture, task)
    "bert-classify": ("tiny_bert", "sentiment_csv", "classify"),
    "llama-sft": ("tiny_llama", "chat_jsonl", "sft"),
    "t5-seq2seq": ("tiny_t5", "pairs_jsonl", "seq2seq"),
}


def test_every_registered_method_has_a_case():
    assert {c.name for c in CASES} == set(METHODS)


def inputs(task: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(5, 30, (3, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task == "seq2seq":  # teacher forcing on a made-up answer
        batch["decoder_input_ids"] = torch.randint(5, 30, (3, 7))
    return batch


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).logits.float()


@contextlib.contextmanager
def adapter_off(model):
    """The model with its adapter off, to call. peft's own `disable_adapter` fails for
    prompt learning on a model that does not generate (a classifier), and leaves a trained
    head (modules_to_save) on: here the frozen model answers, with its original head."""
    if not model.active_peft_config.is_prompt_learning:
        with model.disable_adapter():
            yield model
        return
    from peft.utils import ModulesToSaveWrapper

    heads = [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]
    for m in heads:
        m.enable_adapters(False)
    try:
        yield model.get_base_model()
    finally:
        for m in heads:
            m.enable_adapters(True)


@pytest.fixture(params=list(MODELS))
def trained(request, tmp_path_factory):
    """Train a (method, model) case: (setup, result, task name, tensors before, the outputs
    with the adapter disabled before training (None without an adapter))."""
    def train(method: str):
        if request.param not in case(method).models:
            pytest.skip(f"method={method} does not apply to {request.param} (tested apart)")
        model, data, task = MODELS[request.param]
        out = tmp_path_factory.mktemp(f"{method}-{request.param}") / "run"
        cfg = load_config(None, [f"task={task}", f"model={request.getfixturevalue(model)}",
                                 f"data.train={request.getfixturevalue(data)}",
                                 f"output_dir={out}", "train.precision=fp32",
                                 "train.threads=1", "train.max_steps=6", "train.warmup=0",
                                 "train.batch_size=16", "train.max_length=64",
                                 "eval.generate_samples=0", *case(method).config()])
        s = prepare(cfg)
        before = {n: p.detach().clone() for n, p in s.module.named_parameters()}
        start = None
        if s.method.adapter:
            with adapter_off(s.module) as base:
                start = logits(base, inputs(task))
        result = finish(s, fit(s, progress=False))
        return s, result, task, before, start
    return train


@pytest.mark.parametrize("method", [c.name for c in CASES])
def test_training_moves_exactly_the_trainable_tensors(trained, method):
    s, result, _, before, _ = trained(method)
    after = dict(s.module.named_parameters())
    trainable = {n for n, p in after.items() if p.requires_grad}
    changed = {n for n, p in after.items() if not torch.equal(p, before[n])}
    assert trainable and changed == trainable
    assert result.test is not None and torch.isfinite(torch.tensor(result.test["loss"]))


@pytest.mark.parametrize("method", [c.name for c in CASES])
def test_save_and_reload_is_exact(trained, method):
    s, _, task, _, _ = trained(method)
    batch = inputs(task)
    want = logits(s.module, batch)
    model, _ = open_run(s.out).load()
    if case(method).reload_exact:
        assert torch.equal(logits(model, batch), want)
    else:  # the same function, computed in another order
        torch.testing.assert_close(logits(model, batch), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", names(mergeable=True))
def test_merged_adapter_equals_unmerged(trained, method):
    s, _, task, _, _ = trained(method)
    run = open_run(s.out)
    batch = inputs(task)
    want = logits(run.load()[0], batch)
    merged, _ = run.load(merge=True)  # a quantized base is dequantized first
    assert not hasattr(merged, "peft_config")  # a plain transformers model
    torch.testing.assert_close(logits(merged, batch), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", names(adapter=True))
def test_disabled_adapter_gives_the_model_training_started_from(trained, method):
    """Training touched only the adapter (and the head it trains): with the adapter off,
    the trained model, and the reloaded one, answer as the base did before training."""
    s, _, task, _, start = trained(method)
    batch = inputs(task)
    with adapter_off(s.module) as base:
        torch.testing.assert_close(logits(base, batch), start, atol=0, rtol=0)
    if task == "sft":  # no new head: the reloaded adapter, disabled, is the base model
        from lmtune.models.load import load_pretrained  # (quantized as training had it)

        model, _ = open_run(s.out).load()
        base = load_pretrained("AutoModelForCausalLM", s.cfg.model, False, "sdpa",
                               quantize=s.cfg.quantization)
        with adapter_off(model) as off:
            torch.testing.assert_close(logits(off, batch), logits(base, batch))


def test_bitfit_on_a_model_without_biases_says_to_train_the_norms(tiny_llama, chat_jsonl,
                                                                  tmp_path):
    from lmtune.errors import LmtuneError

    cfg = load_config(None, ["task=sft", f"model={tiny_llama}", f"data.train={chat_jsonl}",
                             f"output_dir={tmp_path / 'run'}", "method=bitfit"])
    with pytest.raises(LmtuneError, match="no bias tensors.*method=norms"):
        prepare(cfg)
    assert not (tmp_path / "run").exists()  # nothing half-written


@pytest.mark.parametrize("method", names("llama-sft", bf16_frozen=True))
def test_frozen_linears_held_in_bf16_change_no_number_under_autocast(tiny_llama, method):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    cfg = load_config(None, ["task=sft", *case(method).config()])
    model = apply_method(model, cfg, get_task("sft"))
    with torch.no_grad():  # a trained adapter, not the zero-initialized one
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model.eval()
    ids = torch.randint(5, 290, (2, 24))
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    with torch.no_grad(), autocast():
        want = model(input_ids=ids).logits.float()
    assert hold_frozen_linears_in_bf16(model) > 0
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    with torch.no_grad(), autocast():
        got = model(input_ids=ids).logits.float()
    assert torch.equal(got, want)


def sft_config(tiny_llama, chat_jsonl, out, *extra):
    return load_config(None, ["task=sft", f"model={tiny_llama}", f"data.train={chat_jsonl}",
                              f"output_dir={out}", "train.precision=fp32", "train.threads=1",
                              "train.batch_size=16", "train.max_length=64", "train.warmup=0",
                              "eval.generate_samples=0", "train.log_every=1", *extra])


def test_qlora_keeps_learning_through_validation_passes(tiny_llama, chat_jsonl, tmp_path):
    """A no-grad forward (validation after every step) must not switch bitsandbytes' 4-bit
    layers to their CPU inference kernel (on CPUs with avx512_bf16 that stops the gradients,
    or fails outright): the adapter keeps learning."""
    import bitsandbytes as bnb

    from tests.conftest import metric_rows, train_tracked

    cfg = sft_config(tiny_llama, chat_jsonl, tmp_path / "run", "train.eval_every=1",
                     "train.max_steps=8", *case("qlora").config())
    s, result, base, unchanged = train_tracked(cfg)
    layers = [m for m in s.module.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    assert not unchanged
    curve = [r["loss"] for r in metric_rows(tmp_path / "run") if "lr" in r]
    assert curve[-1] < curve[0] and result.test["loss"] < base["loss"]


def test_an_8_bit_base_trains_and_reloads_exactly(tiny_llama, chat_jsonl, tmp_path):
    import bitsandbytes as bnb

    cfg = sft_config(tiny_llama, chat_jsonl, tmp_path / "run", "train.max_steps=4",
                     "quantize=int8", *case("lora").config())
    s = prepare(cfg)
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in s.module.modules())
    finish(s, fit(s, progress=False))
    batch = inputs("sft")
    model, _ = open_run(s.out).load()
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    torch.testing.assert_close(logits(model, batch), logits(s.module, batch), atol=0, rtol=0)


def test_quantizing_a_method_that_trains_the_base_is_refused():
    from lmtune.errors import LmtuneError

    with pytest.raises(LmtuneError, match="quantize: quantizes the frozen base"):
        load_config(None, ["method=full", "quantize=nf4"])
    assert load_config(None, ["method=qlora"]).quantization == "nf4"
    assert load_config(None, ["method=lora"]).quantization == "none"


@pytest.mark.parametrize("init", ["pissa", "olora", "gaussian"])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_lora_inits_save_a_plain_lora_adapter_that_reloads_exactly(
        init, model_name, request, tmp_path):
    """PiSSA and OLoRA start from the weight's own factors and train on the rest of it;
    saved, they become a plain LoRA adapter (rank 2r) on the unchanged base: the run reloads
    to the trained outputs (also through peft alone, on a freshly loaded base), and the
    reload repeats no decomposition."""
    import transformers
    from peft import PeftModel

    model, data, task = MODELS[model_name]
    base_path = request.getfixturevalue(model)
    out = tmp_path / "run"
    cfg = load_config(None, [f"task={task}", f"model={request.getfixturevalue(model)}",
                             f"data.train={request.getfixturevalue(data)}", f"output_dir={out}",
                             "train.precision=fp32", "train.threads=1", "train.max_steps=4",
                             "train.batch_size=16", "train.max_length=64",
                             "eval.generate_samples=0", *case("lora").config(),
                             f"lora.init={init}"])
    s = prepare(cfg)
    finish(s, fit(s, progress=False))
    batch = inputs(task)
    want = logits(s.module, batch)
    saved = json.loads((out / "model" / "adapter_config.json").read_text())
    assert saved["r"] == (16 if init != "gaussian" else 8)
    assert saved["init_lora_weights"] is True or init == "gaussian"
    reloaded, _ = open_run(out).load()
    torch.testing.assert_close(logits(reloaded, batch), want, atol=1e-5, rtol=1e-5)
    auto = getattr(transformers, get_task(task).model_class)
    config = transformers.AutoConfig.from_pretrained(out / "model")
    base = auto.from_pretrained(base_path, config=config)
    plain = PeftModel.from_pretrained(base, out / "model")
    torch.testing.assert_close(logits(plain, batch), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides, key", [
    (["method=qlora", "lora.init=pissa"], "lora.init"),
    (["method=lora", "quantize=int8", "lora.init=olora"], "lora.init"),
    (["method=dora", "lora.init=pissa"], "lora.init"),
    (["method=loha", "lora.init=gaussian"], "lora.init"),
    (["method=prompt", "task=mlm"], "method"),
    (["method=prompt", "task=sft", "data.packing=true"], "data.packing"),
    (["method=prefix", "train.gradient_checkpointing=true"], "train.gradient_checkpointing"),
])
def test_a_method_the_settings_cannot_use_is_a_config_error(overrides, key):
    from lmtune.errors import LmtuneError

    with pytest.raises(LmtuneError, match=f"^command line \\(.*\\): {key}: "):
        load_config(None, overrides)


def test_prompt_tuning_starts_from_the_init_texts_token_embeddings(tiny_llama):
    """prompt.init_text: the virtual tokens begin as the embeddings of the text's tokens,
    repeated to their number, not as noise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_llama)("hello world",
                                                    add_special_tokens=False)["input_ids"]
    n = len(ids) + 3  # the text's tokens, then the first three again
    cfg = load_config(None, ["task=sft", f"model={tiny_llama}", "method=prompt",
                             f"prompt.virtual_tokens={n}", "prompt.init_text=hello world"])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    want = base.get_input_embeddings().weight[ids + ids[:3]].detach().clone()
    model = apply_method(base, cfg, get_task("sft"))
    table = model.prompt_encoder[model.active_adapter].embedding.weight
    assert torch.equal(table.detach(), want)

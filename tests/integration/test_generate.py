"""Generation: the training template, batched = one by one, stops at end of turn."""
import json

import pytest

from lmtune.cli import main
from lmtune.data.formats import Message
from lmtune.data.templates import end_of_turn_ids
from lmtune import pipeline
from lmtune.config import GenerateConfig
from lmtune.infer.generate import Generator
from tests.conftest import chat_rows, write_csv
from tests.methods import case, names


@pytest.fixture(scope="module")
def sft_run(tiny_llama, tmp_path_factory):
    """A tiny Llama taught to repeat words back and end its turn."""
    d = tmp_path_factory.mktemp("sft")
    data = d / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(400)))
    assert main(["train", "--quiet", "task=sft", "train.precision=fp32", "train.threads=1",
                 f"model={tiny_llama}", f"data.train={data}", f"output_dir={d / 'run'}",
                 "train.lr=3e-3", "train.epochs=20", "train.batch_size=16",
                 "train.warmup=0.05"]) == 0
    return d / "run"


PROMPTS = ["repeat: the cat sat", "repeat: dog ran to park", "repeat: hello world",
           "repeat: a short text"]


def test_batched_generation_equals_one_prompt_at_a_time(sft_run):
    gen = Generator(sft_run, precision="fp32")
    together = gen(PROMPTS)
    alone = [gen(p) for p in PROMPTS]
    assert together == alone  # left padding changes nothing
    assert pipeline(sft_run, precision="fp32")(PROMPTS[0]) == together[0]


def test_streamed_greedy_output_equals_the_whole_answer(sft_run):
    """Pieces arrive one by one and join to exactly what `generate` returns: with the
    end-of-turn stop, with a stop string cut mid-answer, with a random untrained model's
    run-on text, and for an empty answer."""
    gen = Generator(sft_run, precision="fp32")
    for settings in (None, GenerateConfig(stop=["park"]), GenerateConfig(stop=[" "]),
                     GenerateConfig(max_new_tokens=5)):
        for prompt in PROMPTS:
            conv = [Message("user", prompt)]
            pieces = list(gen.stream(conv, settings))
            want = gen.generate([conv], settings)[0]
            assert "".join(pieces) == want, (settings, prompt, pieces)
            assert len(pieces) > 1 or len(want.split()) <= 1  # streamed, not all at once


def test_generation_uses_the_training_template_and_stops_at_end_of_turn(sft_run):
    gen = Generator(sft_run, precision="fp32")
    conv = [Message("user", "repeat: hello world"), Message("assistant", "hello world")]
    assert gen.prompt_text(conv) == "### User:\nrepeat: hello world\n### Assistant:\n"
    settings = gen.settings
    for prompt, text in zip(PROMPTS, gen(PROMPTS)):
        n = len(gen.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert n < settings.max_new_tokens, f"{prompt!r} ran on: {text!r}"
    assert "hello world" in gen(PROMPTS)  # it learned the task, copy included


def test_end_of_turn_and_eos_both_stop(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.add_special_tokens({"eos_token": "</s>"})  # EOS no longer the end-of-turn token
    assert end_of_turn_ids(tok) == {tok.convert_tokens_to_ids("</s>"),
                                    tok.convert_tokens_to_ids("<|endoftext|>")}


def test_generate_cli_reads_chat_jsonl_and_keeps_the_reference_apart(sft_run, tmp_path):
    rows = [{"messages": [{"role": "user", "content": p},
                          {"role": "assistant", "content": p.split(": ", 1)[1]}]}
            for p in PROMPTS]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["generate", str(sft_run), "--input", str(src), "--output", str(out),
                 "generate.max_new_tokens=12"]) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["prompt"] for g in got] == PROMPTS
    assert [g["reference"] for g in got] == [p.split(": ", 1)[1] for p in PROMPTS]
    assert all(isinstance(g["text"], str) for g in got)


def test_generate_cli_reads_plain_prompts_from_txt_and_a_text_column(sft_run, tmp_path,
                                                                      capsys):
    txt, csv_file = tmp_path / "in.txt", tmp_path / "in.csv"
    txt.write_text(PROMPTS[0] + "\n\n" + PROMPTS[1] + "\n")  # blank lines are not prompts
    write_csv(csv_file, [{"text": p} for p in PROMPTS])
    for src, want in [(txt, PROMPTS[:2]), (csv_file, PROMPTS)]:
        out = tmp_path / f"{src.suffix[1:]}.jsonl"
        assert main(["generate", str(sft_run), "--input", str(src), "--output", str(out),
                     "generate.max_new_tokens=4"]) == 0
        got = [json.loads(x) for x in out.read_text().splitlines()]
        assert [g["prompt"] for g in got] == want and "reference" not in got[0]
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café\n".encode("latin-1"))
    assert main(["generate", str(sft_run), "--input", str(latin)]) == 2
    assert f"{latin}: not valid UTF-8" in capsys.readouterr().err
    assert main(["generate", str(sft_run), "--input", str(tmp_path / "none.txt")]) == 2
    assert "none.txt: file not found" in capsys.readouterr().err


def test_generate_cli_rejects_other_settings(sft_run, capsys):
    assert main(["generate", str(sft_run), "--prompt", "hi", "train.lr=1"]) == 2
    assert "only generate.* settings" in capsys.readouterr().err


def test_eval_of_an_sft_run_compares_with_its_base(sft_run, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    assert main(["eval", str(sft_run), "--compare-base", "--output", str(out),
                 "eval.max_samples=8", "generate.max_new_tokens=12"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("eval: 100%") == 2  # the loss pass over the test rows, twice
    result = json.loads((sft_run / "eval.json").read_text())
    tuned, base = result["test"], result["base"]["test"]
    for m in (tuned, base):
        assert {"loss", "perplexity", "rouge1", "rouge2", "rougeL", "bleu", "chrf",
                "exact_match"} <= set(m)
        assert m["generated"] == 8
    assert tuned["loss"] < base["loss"] and tuned["rougeL"] > base["rougeL"]
    table = captured.out
    assert "base" in table and "tuned" in table and "change" in table
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 8 and all({"prompt", "reference", "text", "base_text"} <= set(r)
                                  for r in rows)


def test_stop_strings_end_the_answer(sft_run):
    from lmtune.config import GenerateConfig

    gen = Generator(sft_run, precision="fp32")
    full = gen.generate([[Message("user", "repeat: hello world")]])[0]
    assert "world" in full
    cut = gen.generate([[Message("user", "repeat: hello world")]],
                       GenerateConfig(stop=["world"]))[0]
    assert cut == full[:full.index("world")].strip()


def test_eval_on_a_new_file_reads_only_that_file(sft_run, tmp_path):
    """`lmtune eval RUN data.test=NEW` needs neither the training data nor its format."""
    new = tmp_path / "new.jsonl"  # another format (prompt/completion) than training used
    new.write_text("".join(json.dumps({"prompt": r["messages"][0]["content"],
                                       "completion": r["messages"][1]["content"]}) + "\n"
                           for r in chat_rows(12, seed=7)))
    assert main(["eval", str(sft_run), f"data.train={tmp_path / 'gone.jsonl'}",
                 f"data.test={new}", "eval.max_samples=4", "generate.max_new_tokens=8",
                 "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())["test"]
    assert result["n"] == 12 and result["generated"] == 4
    assert result["source"] == str(new)


def test_repetition_penalty_reaches_decoding(sft_run):
    """The model was taught to repeat the prompt's words; a strong penalty on every token
    already seen must change what it writes, and 1.0 must change nothing."""
    from lmtune.config import GenerateConfig

    gen = Generator(sft_run, precision="fp32")
    convs = [[Message("user", p)] for p in PROMPTS]
    plain = gen.generate(convs, GenerateConfig(max_new_tokens=12))
    assert gen.generate(convs, GenerateConfig(max_new_tokens=12, repetition_penalty=1.0)) == plain
    penalized = gen.generate(convs, GenerateConfig(max_new_tokens=12, repetition_penalty=50.0))
    assert penalized != plain


@pytest.mark.parametrize("method", names("llama-sft", adapter=True, mergeable=False))
def test_prompt_learning_runs_generate_what_their_forward_predicts(tiny_llama, chat_jsonl,
                                                                   tmp_path, method):
    """Prompt and prefix adapters change the model's input, not its weights: generation
    goes through peft, and its greedy answer is the one a plain argmax loop over the
    adapted forward gives (so the virtual tokens are in place and no token is cut)."""
    import torch

    from lmtune.rundir import open_run

    out = tmp_path / "run"
    assert main(["train", "--quiet", "task=sft", "train.precision=fp32", "train.threads=1",
                 f"model={tiny_llama}", f"data.train={chat_jsonl}", f"output_dir={out}",
                 "train.max_steps=3", *case(method).config()]) == 0
    gen = Generator(out, precision="fp32")
    settings = GenerateConfig(max_new_tokens=6)
    conv = [Message("user", PROMPTS[0])]
    got = gen.generate([conv], settings)[0]
    assert got == gen.generate([conv, [Message("user", PROMPTS[1])]], settings)[0]
    model, tokenizer = open_run(out).load()
    ids = torch.tensor([gen.encode_prompt(conv)])
    new = []
    with torch.no_grad():
        for _ in range(settings.max_new_tokens):
            nxt = model(input_ids=ids).logits[0, -1].argmax().item()
            if nxt in gen.stop_ids:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    assert new and got == tokenizer.decode(new, skip_special_tokens=True).strip()

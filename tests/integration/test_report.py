"""`lmtune report`: a self-contained page per run and one comparing runs, rendered by headless
Chromium without console errors."""
import json
import re
import shutil
import subprocess

import pytest

from lmtune.cli import main

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert, sentiment_csv, tiny_llama, chat_jsonl):
    """A classification run (with `lmtune eval --compare-base`) and an SFT run."""
    d = tmp_path_factory.mktemp("report")
    common = ["train.threads=1", "train.precision=fp32", "train.min_steps=0",
              "train.log_every=1", "train.eval_every=3"]
    assert main(["train", "--quiet", f"model={tiny_bert}", f"data.train={sentiment_csv}",
                 "train.max_steps=6", "train.lr=3e-3", f"output_dir={d / 'clf'}", *common]) == 0
    assert main(["eval", str(d / "clf"), "--compare-base"]) == 0
    assert main(["train", "--quiet", "task=sft", f"model={tiny_llama}",
                 f"data.train={chat_jsonl}", "train.max_steps=6", "train.max_length=64",
                 "eval.generate_samples=0", f"output_dir={d / 'sft'}", *common]) == 0
    assert main(["eval", str(d / "sft"), "generate.max_new_tokens=8"]) == 0
    return d / "clf", d / "sft"


def test_a_report_holds_curves_results_data_and_config(runs):
    clf, sft = runs
    assert main(["report", str(clf)]) == 0
    page = (clf / "report.html").read_text()
    assert page.count("<svg") >= 5  # loss, lr, throughput, validation loss, accuracy + matrix
    assert "clf: confusion matrix" in page and "clf (base): confusion matrix" in page
    assert "Test results" in page and "per class" in page and "(base)" in page
    assert "config.yaml" in page and "trainable_params" in page and "Environment" in page
    assert not re.search(r"(src|href)=['\"]?https?:", page)  # nothing to fetch
    test = json.loads((clf / "eval.json").read_text())["test"]
    assert f"{test['accuracy']:.4f}" in page
    assert main(["report", str(sft)]) == 0
    page = (sft / "report.html").read_text()
    samples = [json.loads(x) for x in (sft / "eval_samples.jsonl").read_text().splitlines()]
    assert "validation loss" in page and f"first {min(8, len(samples))} of {len(samples)}" \
        in page
    assert samples[0]["reference"] in page  # the reference beside what was generated


def test_several_runs_make_one_comparison(runs, tmp_path, capsys):
    clf, sft = runs
    assert main(["report", str(clf), str(sft)]) == 2
    assert "give --output" in capsys.readouterr().err
    out = tmp_path / "both.html"
    assert main(["report", str(clf), str(sft), "--output", str(out)]) == 0
    page = out.read_text()
    assert "clf, sft" in page and page.count("<svg") >= 4
    assert main(["report", str(tmp_path)]) == 2  # not a run dir


def test_chromium_renders_the_report_without_errors(runs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (make setup installs it as root)")
    from PIL import Image

    clf, sft = runs
    both = tmp_path / "both.html"
    assert main(["report", str(clf)]) == 0 and main(["report", str(sft)]) == 0
    assert main(["report", str(clf), str(sft), "--output", str(both)]) == 0
    for page in (clf / "report.html", sft / "report.html", both):
        shot = tmp_path / f"{page.parent.name}-{page.stem}.png"
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--enable-logging=stderr", "--v=0", "--window-size=1200,1600",
             f"--screenshot={shot}", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
        assert shot.exists(), proc.stderr[-2000:]
        assert "CONSOLE" not in proc.stderr and "Uncaught" not in proc.stderr, proc.stderr
        img = Image.open(shot).convert("L")
        dark = sum(1 for p in img.getdata() if p < 128) / (img.width * img.height)
        assert 0.005 < dark < 0.5, page  # text and lines drawn: not blank, not black

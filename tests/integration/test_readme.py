"""The README's Python snippet runs as written (in a temp dir, on the real MiniLM)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"


@pytest.mark.slow
def test_readme_python_snippet_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no Python snippet"
    monkeypatch.chdir(tmp_path)
    code = blocks[0].replace('overrides=["train.epochs=5", "train.lr=3e-4"]',
                             'overrides=["train.epochs=5", "train.lr=3e-4", "train.threads=1"],'
                             ' progress=False')
    assert code != blocks[0]  # the snippet still has the line this test adapts
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("{'label': ") and out[-1].startswith("[{'label': ")
    reloaded = ns["clf"]  # the snippet ends with the run reloaded through lmtune.pipeline
    got = reloaded(["a dull, lifeless mess", "a warm, funny and moving story"])
    assert [g["label"] for g in got] == ["neg", "pos"]  # it learned its training texts
    assert (tmp_path / "runs" / "api" / "model" / "model.safetensors").exists()

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
    code = blocks[0].replace('overrides=["train.epochs=2"]',
                             'overrides=["train.epochs=2", "train.threads=1"], progress=False')
    assert code != blocks[0]  # the snippet still has the line this test adapts
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert "'label': 'pos'" in out[-2]  # the tuned model separates the two training texts' kin
    assert (tmp_path / "runs" / "api" / "model" / "model.safetensors").exists()

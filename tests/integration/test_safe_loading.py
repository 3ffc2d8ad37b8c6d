"""A model dir that ships its own Python code is refused unless trust_remote_code=true, and
its code never runs."""
import json
import shutil


from lmtune.cli import main


def test_remote_code_is_refused_with_a_reason_and_never_runs(tiny_bert, sentiment_csv,
                                                              tmp_path, capsys):
    model = tmp_path / "custom-model"
    shutil.copytree(tiny_bert, model)
    marker = tmp_path / "code-ran"
    (model / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                     "from transformers import BertConfig as CustomConfig\n")
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "custom-bert"  # unknown to transformers: only its code can load it
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig"}
    (model / "config.json").write_text(json.dumps(config))
    code = main(["train", "--quiet", f"model={model}", f"data.train={sentiment_csv}",
                 f"output_dir={tmp_path / 'run'}", "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "ships its own Python code" in err and "trust_remote_code=true" in err
    assert not marker.exists()
    assert not (tmp_path / "run").exists()

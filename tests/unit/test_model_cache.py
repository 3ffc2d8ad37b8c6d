"""The smollm2 alias converts its GGUF once, atomically, even when processes race."""
import threading
import time

import lmtune.models.load as load


def test_two_starts_at_once_convert_once_and_both_get_the_finished_dir(tmp_path,
                                                                       monkeypatch):
    calls = []

    def slow_convert(gguf, out):  # stands in for the 30 s dequantization
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"weights")
        time.sleep(0.3)  # the other starter must wait, not see a half-written dir
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(load, "_dequantize", slow_convert)
    dest = tmp_path / "models" / "tiny"
    got = []
    threads = [threading.Thread(target=lambda: got.append(
        load.convert_gguf(tmp_path / "tiny.gguf", dest))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and got == [dest, dest]
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".tiny.tmp")] == []


def test_a_failed_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(gguf, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(load, "_dequantize", broken)
    dest = tmp_path / "models" / "tiny"
    try:
        load.convert_gguf(tmp_path / "tiny.gguf", dest)
    except OSError:
        pass
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir() if not p.name.endswith(".lock")] == []

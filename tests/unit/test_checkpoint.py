"""Checkpoint files: atomic writes, retention, hash checks, failed writes, safe loading."""
import errno
import hashlib
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from lmtune import checkpoint
from lmtune.errors import LmtuneError
from lmtune.rundir import rewind_metrics


def save(root, step, keep=2, best_step=None):
    w = {"w": torch.full((3,), float(step))}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    return checkpoint.save(root, step, trainable=w, best=None, optimizer=opt.state_dict(),
                           scheduler={"last_epoch": step}, rngs=[checkpoint.rng_state()],
                           progress={"step": step, "world_size": 1}, keep=keep,
                           best_step=best_step)


def test_save_load_and_keep_the_newest_plus_the_best(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep=2, best_step=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["step-000001", "step-000003", "step-000004"]
    loaded = checkpoint.load_latest(tmp_path, rank=0, world=1)
    assert loaded.path.name == "step-000004"
    assert torch.equal(loaded.trainable["w"], torch.full((3,), 4.0))
    assert loaded.scheduler == {"last_epoch": 4} and loaded.progress["step"] == 4


def test_a_corrupted_or_torn_checkpoint_is_skipped_with_a_warning(tmp_path, capsys):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    data = bytearray((newest / "trainable.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (newest / "trainable.safetensors").write_bytes(bytes(data))
    (tmp_path / "step-000003").mkdir()  # no manifest, e.g. half copied by hand
    assert checkpoint.load_latest(tmp_path, 0, 1).path.name == "step-000001"
    err = capsys.readouterr().err
    assert "step-000002: trainable.safetensors does not match its sha256" in err
    assert "step-000003: missing or unreadable manifest.json" in err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_failed_write_is_a_clear_error_and_keeps_the_last_good_one(tmp_path, monkeypatch,
                                                                      code):
    save(tmp_path, 1)

    def full_disk(fd):
        raise OSError(code, {errno.ENOSPC: "No space left on device",
                             errno.EACCES: "Permission denied"}[code])

    monkeypatch.setattr(checkpoint.os, "fsync", full_disk)
    with pytest.raises(LmtuneError, match="could not write.*last good checkpoint "
                                          "step-000001 is intact"):
        save(tmp_path, 2)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step-000001"]  # no temp dir left over
    assert checkpoint.load_latest(tmp_path, 0, 1).path.name == "step-000001"


class Payload:
    def __reduce__(self):  # what a hostile pickle does: run code while loading
        return (exec, ("open(__import__('os').environ['PWNED'], 'w').close()",))


def test_state_files_load_with_weights_only_and_never_run_code(tmp_path, monkeypatch):
    path = save(tmp_path, 1)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED", str(marker))
    (path / "optimizer.pt").write_bytes(pickle.dumps({"optimizer": Payload()}))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["optimizer.pt"] = hashlib.sha256(
        (path / "optimizer.pt").read_bytes()).hexdigest()  # the hash checks out: only
    # weights_only loading stands between the file and code execution
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LmtuneError, match="refused to load"):
        checkpoint.load_latest(tmp_path, 0, 1)
    assert not marker.exists()


def test_a_checkpoint_from_another_world_size_is_refused(tmp_path):
    save(tmp_path, 1)
    with pytest.raises(LmtuneError, match="written by 1 processes"):
        checkpoint.load_latest(tmp_path, 0, 2)


def test_a_checkpoint_split_another_way_is_refused(tmp_path):
    """Resuming needs the strategy that wrote the state: ddp files cannot feed ZeRO-3's
    partitions, and the message says which settings wrote it."""
    checkpoint.save(tmp_path, 1, trainable={"w": torch.ones(3)}, best=None, optimizer={},
                    scheduler={}, rngs=[checkpoint.rng_state()],
                    progress={"step": 1, "world_size": 1, "distributed": "deepspeed-zero3"},
                    keep=2, best_step=None)
    with pytest.raises(LmtuneError, match="train.distributed=deepspeed train.zero_stage=3 "
                       "over 1 processes; this run uses train.distributed=ddp"):
        checkpoint.load_latest(tmp_path, 0, 1, "ddp")
    loaded = checkpoint.load_latest(tmp_path, 0, 1, "deepspeed-zero3")
    assert loaded.shards == tmp_path / "step-000001" / "shards"


def test_deepspeed_checkpoint_files_are_checked_before_deepspeed_unpickles_them(tmp_path):
    """DeepSpeed reads its files with plain pickle; lmtune first loads each with
    weights_only and only DeepSpeed's own state classes allowed."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    from lmtune.distributed.zero import _check_plain

    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    good = tmp_path / "good.pt"
    torch.save({"optimizer_state_dict": {"loss_scaler": LossScaler(1.0)},
                "w": torch.ones(2)}, good)
    _check_plain(good)  # DeepSpeed's own state passes
    bad = tmp_path / "bad.pt"
    torch.save({"optimizer_state_dict": Evil()}, bad)
    with pytest.raises(LmtuneError, match="bad.pt: refused to load it"):
        _check_plain(bad)
    assert not marker.exists()


def test_rng_state_round_trip_restores_every_stream():
    state = checkpoint.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    checkpoint.set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_rewind_metrics_drops_later_rows_test_rows_and_a_torn_last_line(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9},
            {"step": 2, "split": "validation"}, {"step": 3, "loss": 0.8},
            {"step": 3, "split": "test"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    rewind_metrics(path, 2)
    assert [json.loads(x) for x in path.read_text().splitlines()] == rows[:3]
    assert "dropped a torn last line" in capsys.readouterr().err


def test_rewind_metrics_refuses_a_broken_line_in_the_middle(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"st\n{"step": 2}\n')
    with pytest.raises(LmtuneError, match=r"metrics.jsonl:2: not valid JSON"):
        rewind_metrics(path, 5)


def test_sharded_checkpoint_metadata_and_values_never_run_code(tmp_path):
    """torch.distributed.checkpoint unpickles its metadata and non-tensor values with plain
    pickle; lmtune's reader refuses anything but plain data there, before torch reads it."""
    import io

    from lmtune.distributed.fsdp import _safe_reader

    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / ".metadata").write_bytes(pickle.dumps(Evil()))
    reader, planner = _safe_reader(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        reader.read_metadata()
    buf = io.BytesIO()
    torch.save(Evil(), buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        planner.load_bytes(None, buf)
    assert not marker.exists()


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("Error while serializing: I/O error: "
                                                  "No space left on device (os error 28)")])
def test_a_failed_model_save_keeps_the_old_model_dir(tmp_path, failure):
    """The final save fails cleanly (the second error is how safetensors reports it)."""
    from lmtune.rundir import atomic_save_dir

    final = tmp_path / "model"
    atomic_save_dir(final, lambda p: (p / "weights").write_text("old"))

    def fail(p):
        (p / "weights").write_text("half")
        raise failure

    with pytest.raises(LmtuneError, match="model: could not write it .*No space left"):
        atomic_save_dir(final, fail)
    assert (final / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp dir left behind


def test_a_failed_text_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path,
                                                                         monkeypatch):
    from lmtune.rundir import atomic_write_text

    path = tmp_path / "summary.json"
    atomic_write_text(path, "old")
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_world_size_is_read_from_the_newest_valid_checkpoint(tmp_path):
    """`lmtune resume` starts this many processes."""
    assert checkpoint.world_size(tmp_path) == 1  # none yet: one process
    save(tmp_path, 1)
    checkpoint.save(tmp_path, 2, trainable={"w": torch.ones(3)}, best=None, optimizer={},
                    scheduler={}, rngs=[checkpoint.rng_state()] * 2,
                    progress={"step": 2, "world_size": 2}, keep=2, best_step=None)
    assert checkpoint.world_size(tmp_path) == 2
    (tmp_path / "step-000002" / "progress.json").write_text("{}")  # torn: hashes disagree
    assert checkpoint.world_size(tmp_path) == 1


def test_a_signal_that_lands_during_the_ranks_agreement_is_kept(capsys):
    """With several processes each poll is a max-reduction over the ranks. A SIGTERM that
    arrives while this rank waits in it (after it said 0) must be honoured at the next poll,
    not overwritten by the agreed 0: losing it let a validation pass run to its end."""
    import signal
    from types import SimpleNamespace

    from lmtune.train import stop_requested

    stop = checkpoint.StopRequest()

    def reduce(flag, reduction):
        assert reduction == "max"
        if not stop.signum:
            stop._handle(signal.SIGTERM, None)  # the signal lands mid-reduction
        return flag  # the other rank said 0 too

    s = SimpleNamespace(strategy=SimpleNamespace(world=2, device="cpu", reduce=reduce))
    assert stop_requested(s, stop) is False  # this poll was already under way
    assert stop_requested(s, stop) is True
    assert stop.signum == signal.SIGTERM


def test_another_ranks_signal_sets_this_ranks_exit_code():
    import signal
    from types import SimpleNamespace

    import torch as t

    from lmtune.train import stop_requested

    stop = checkpoint.StopRequest()
    s = SimpleNamespace(strategy=SimpleNamespace(
        world=2, device="cpu", reduce=lambda flag, reduction: t.tensor(float(signal.SIGINT))))
    assert stop_requested(s, stop) is True and stop.signum == signal.SIGINT

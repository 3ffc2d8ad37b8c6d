"""Process-level settings in lmtune.runtime: oneDNN's primitive cache, heap trimming, threads,
launchers; and that importing lmtune changes none of them.

Each process-wide check runs in a fresh interpreter.
"""
import os
import subprocess
import sys

import pytest


def run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    out = subprocess.run([sys.executable, "-c", code], env=clean | env, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def test_importing_lmtune_leaves_the_environment_and_threads_alone():
    code = """
import os, torch
torch.set_num_threads(1)
env = dict(os.environ)
import lmtune, lmtune.cli, lmtune.train, lmtune.runtime, lmtune.distributed
print(dict(os.environ) == env, torch.get_num_threads())
"""
    assert run_python(code) == "True 1"


def test_a_command_caps_the_onednn_cache_unless_the_user_set_it():
    code = """
import os
from lmtune.cli import main
main(["predict", "no-such-run", "text"])  # fails on the input, after setting the runtime
print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])
"""
    from lmtune.runtime import ONEDNN_CACHE

    assert run_python(code) == ONEDNN_CACHE
    assert run_python(code, ONEDNN_PRIMITIVE_CACHE_CAPACITY="64") == "64"


def test_training_threads_are_scoped_to_the_run():
    import torch

    from lmtune.runtime import threads

    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# the resident set of the running process in MB, for the snippets below
RSS = """
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_free_memory_returns_freed_heap_pages():
    # 300 blocks of 64 KB (below glibc's mmap threshold, so they live in the heap) are freed
    # while a last block pins the top of the heap: glibc keeps the ~19 MB until trimmed.
    code = RSS + """
import ctypes
from lmtune.runtime import release_free_memory
malloc = ctypes.CDLL(None).malloc
malloc.restype, free = ctypes.c_void_p, ctypes.CDLL(None).free
free.argtypes = [ctypes.c_void_p]
blocks = [malloc(64 * 1024) for _ in range(300)]
for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
pin = malloc(64 * 1024)
for b in blocks:
    free(b)
before = rss()
release_free_memory()
print(before - rss())
"""
    assert float(run_python(code)) > 15  # MB handed back


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
@pytest.mark.parametrize("mapped", [False, True])
def test_map_large_buffers_hands_a_freed_activation_back(mapped):
    """Once an 8 MB block has been freed, glibc serves the next from its heap, where it stays
    resident after `del` (a small block above it pins the heap's top); with
    map_large_buffers it has its own mapping and leaves RSS when freed."""
    code = RSS + f"""
import torch
from lmtune.runtime import map_large_buffers
if {mapped}:
    assert map_large_buffers()
x = torch.ones(2 ** 21)  # 8 MB: mapped apart (above the 128 KB default), then freed
del x                    # ...which raises glibc's threshold past 8 MB
y = torch.ones(2 ** 21)
keep = torch.ones(1024)
before = rss()
del y
print(before - rss())
"""
    dropped = float(run_python(code))  # MB
    assert (dropped > 7) if mapped else (dropped < 2)


def test_accelerate_deepspeed_launch_is_refused_with_the_way_to_ask_for_it(monkeypatch):
    """`accelerate launch --use_deepspeed` would hand the step to accelerate's DeepSpeed
    set-up; lmtune says to use train.distributed=deepspeed instead."""
    from lmtune.distributed import make_accelerator
    from lmtune.errors import LmtuneError

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(LmtuneError, match="train.distributed=deepspeed"):
        make_accelerator()


def test_one_process_strategy_hands_back_its_model_without_importing_deepspeed():
    """Validation asks for the unwrapped model; accelerate's unwrapping would import
    DeepSpeed (seconds, tens of MB) in every run where it is installed."""
    out = run_python("""
import sys, torch
from lmtune.config import TrainConfig
from lmtune.distributed import make_strategy
model = torch.nn.Linear(4, 2)
strategy = make_strategy(TrainConfig(), "fp32")
strategy.wrap(model, torch.optim.AdamW(model.parameters()))
print(strategy.module is model, "deepspeed" in sys.modules)
""")
    assert out.split() == ["True", "False"]

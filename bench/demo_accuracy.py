"""The default job against the foundation issue's target: test accuracy >= 0.84 within
180 s of training on this CPU. Exits 1 when either is missed.

    .venv/bin/python bench/demo_accuracy.py

Last line: `test_accuracy=... train_seconds=... met=yes|no`.
"""
from __future__ import annotations

import sys
import tempfile

TARGET_ACCURACY, TARGET_SECONDS = 0.84, 180.0


def main() -> int:
    from lmtune.config import load_config
    from lmtune.runtime import configure_process
    from lmtune.train import train

    configure_process()  # as `lmtune train` does
    out = tempfile.mkdtemp(prefix="lmtune-demo-")
    result = train(load_config(None, [f"output_dir={out}/run"]), progress=False)
    accuracy, seconds = result.test["accuracy"], result.train_seconds
    met = accuracy >= TARGET_ACCURACY and seconds <= TARGET_SECONDS
    print(f"test_accuracy={accuracy:.4f} train_seconds={seconds:.1f} "
          f"met={'yes' if met else 'no'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

"""Choosing a method before training: `lmtune plan` and the out-of-memory guard.

    shape.py      the machine's memory; parameter counts on torch's meta device
    probe.py      a child process that measures a few training steps of chosen shapes
    calibrate.py  runs the probe once per machine, versions, model and step settings; caches it
    model.py      the fitted step memory and time; the run's batches
    planner.py    one row per method, and the recommendation
    guard.py      `lmtune train`'s check before the weights load
    measure.py    a few real steps of `lmtune train` beside the prediction (--measure, bench)
    command.py    the `lmtune plan` command
"""

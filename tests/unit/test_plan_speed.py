"""The machine's speed in the planner's times: the probe's timings are taken at one speed,
and predictions are scaled to the speed read when predicting."""
import pytest
import torch

from lmtune.config import load_config
from lmtune.plan.model import Batch, Calibration, Fit
from lmtune.plan.planner import RunShape, predict
from lmtune.plan.shape import ModelShape
from lmtune.plan.speed import reference_seconds

SHAPES = [(4, 64, 64), (8, 64, 16), (4, 128, 128), (8, 128, 32), (8, 128, 128), (4, 256, 256)]
TRUE = Fit((0.05, 2e-4, 0.0, 1e-4))  # seconds of a micro-batch at the reference's 0.1 s


def probe_output(slowdowns: list[float]) -> dict:
    """What the probe would write on a machine running `slowdowns[i]` times slower while it
    timed shape i (the reference slows with it)."""
    pts = [{"rows": b, "width": w, "trained": t, "step_mb": 10.0 + b * w / 100,
            "backward_seconds": TRUE(b, w, t) * s, "forward_seconds": TRUE(b, w, t) * s / 3,
            "update_seconds": 0.02 * s, "reference_seconds": 0.1 * s}
           for (b, w, t), s in zip(SHAPES, slowdowns)]
    return {"points": pts, "loaded_mb": 300.0, "before_model_mb": 200.0,
            "optimizer_mb": 20.0, "load_seconds": 1.0, "mixed_step_mb": 60.0,
            "reference_seconds": 0.1}


def test_a_slow_minute_during_one_probe_shape_does_not_bend_the_time_fit():
    steady = Calibration.from_probe(probe_output([1.0] * 6))
    bumped = Calibration.from_probe(probe_output([1.0, 1.0, 1.4, 1.0, 1.0, 1.0]))
    assert bumped.reference_seconds == pytest.approx(0.1)
    assert bumped.backward.coef == pytest.approx(steady.backward.coef, rel=1e-6)
    assert bumped.update_seconds == pytest.approx(0.02)
    assert steady.backward(16, 128, 64) == pytest.approx(TRUE(16, 128, 64), rel=1e-6)
    # Without the reference the bump leaks into the coefficients.
    raw = probe_output([1.0, 1.0, 1.4, 1.0, 1.0, 1.0])
    for p in raw["points"]:
        del p["reference_seconds"]
    assert Calibration.from_probe(raw).backward.coef != pytest.approx(steady.backward.coef,
                                                                      rel=1e-3)


def run_shape() -> RunShape:
    batches = [Batch(16, 128, 0)] * 10
    return RunShape(160, batches, 10, 1, [Batch(32, 128, 0)] * 2, [], 100.0, 100.0, 2.0, 128)


def test_predicted_times_scale_with_the_speed_read_when_predicting():
    cfg = load_config(None, [])
    shape = ModelShape(1000, 1000, 1.0, 2, 64, 100, False, 512)
    cal = Calibration.from_probe(probe_output([1.0] * 6))
    same = predict(cfg, run_shape(), shape, cal, 1e6, 0.1)
    slower = predict(cfg, run_shape(), shape, cal, 1e6, 0.15)
    unknown = predict(cfg, run_shape(), shape, cal, 1e6, None)
    assert same.seconds_per_step == pytest.approx(unknown.seconds_per_step)
    assert slower.seconds_per_step == pytest.approx(1.5 * same.seconds_per_step)
    # Steps and validations scale; reading and tokenizing (measured) and loading do not.
    fixed = 2.0 + cal.load_seconds
    assert slower.total_seconds - fixed == pytest.approx(1.5 * (same.total_seconds - fixed))
    assert slower.peak_memory_mb == same.peak_memory_mb


def test_the_reference_is_a_positive_time_and_leaves_threads_and_rng_alone():
    torch.set_num_threads(1)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    seconds = reference_seconds(threads=2, repeats=1)
    assert 0 < seconds < 30
    assert torch.get_num_threads() == 1
    assert torch.equal(torch.rand(3), expected)

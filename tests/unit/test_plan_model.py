"""The planner's model: the fit, the batches it walks, the analytic fallback, the choice."""
import numpy as np
import pytest

from lmtune.data.collate import Encoded
from lmtune.plan.calibrate import probe_points
from lmtune.plan.model import Batch, Fit, cold_seconds, fit, new_shape_share
from lmtune.plan.planner import Row, checkpoints, first_of_shapes, recommend
from lmtune.plan.shape import ModelShape, analytic_mb


def points(coef, shapes, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for b, w, t in shapes:
        y = Fit(coef)(b, w, t) * (1 + noise * rng.standard_normal())
        out.append({"rows": b, "width": w, "trained": t, "v": y})
    return out


SHAPES = [(4, 64, 64), (8, 64, 16), (4, 128, 128), (8, 128, 32), (8, 128, 128)]


def test_fit_recovers_the_coefficients_of_exact_measurements():
    coef = (50.0, 0.2, 1e-4, 0.05)
    got = fit(points(coef, SHAPES), "v").coef
    assert got == pytest.approx(coef, rel=1e-6)


def test_fit_keeps_every_coefficient_non_negative_and_extrapolates_in_batch_size():
    """Noisy points whose best square term is negative: it is dropped, and the prediction
    for a batch 8 times larger stays within 10% of the truth."""
    coef = (80.0, 0.16, 0.0, 0.0)
    got = fit(points(coef, SHAPES, noise=0.02, seed=3), "v")
    assert all(c >= 0 for c in got.coef)
    assert got(64, 128, 0) == pytest.approx(Fit(coef)(64, 128, 0), rel=0.1)


def test_a_feature_that_never_varies_is_not_fitted():
    """A classifier's points train no token: the vocabulary term stays 0."""
    shapes = [(b, w, 0) for b, w, _ in SHAPES]
    got = fit(points((10.0, 0.1, 0.0, 0.0), shapes), "v").coef
    assert got[3] == 0.0 and got[1] == pytest.approx(0.1)


def test_probe_shapes_shrink_with_the_model_and_stay_within_its_positions():
    small, large = probe_points(22_000_000, 512), probe_points(135_000_000, 512)
    assert max(b * w for b, w, _ in small) > max(b * w for b, w, _ in large)
    assert all(w <= 100 for _, w, _ in probe_points(135_000_000, 100))
    assert {w for _, w, _ in small} == {16, 32, 64, 128, 256}  # the same for every run
    assert {w for _, w, _ in probe_points(22_000_000, 128)} == {16, 32, 64, 128}
    assert {w for _, w, _ in probe_points(22_000_000, 48)} == {16, 32, 48}
    assert {w for _, w, _ in probe_points(22_000_000, 24)} == {16, 24}
    # attention is told from the vocabulary where it is largest: both fractions trained there
    assert {t for _, w, t in small if w == 256} == {256, 64}


def test_the_analytic_step_memory_is_linear_in_batch_times_length():
    shape = ModelShape(total=10**8, trainable=10**6, weight_mb=400.0, layers=12, hidden=768,
                       vocab=50000, lm_head=True, positions=2048)
    base = analytic_mb(shape, 1, 1, 0)[1]
    steps = [analytic_mb(shape, b, w, 0)[1] - base for b, w in ((4, 128), (8, 128), (4, 256))]
    assert steps[1] == pytest.approx(2 * steps[0], rel=1e-3)
    assert steps[2] == pytest.approx(2 * steps[0], rel=1e-3)
    # LoRA-sized trainable weights: the optimizer's moments are a sliver of full's
    lora = ModelShape(10**8, 10**6, 400.0, 12, 768, 50000, True, 2048)
    full = ModelShape(10**8, 10**8, 400.0, 12, 768, 50000, True, 2048)
    assert analytic_mb(full, 1, 1, 0)[0] - analytic_mb(lora, 1, 1, 0)[0] > 700
    assert analytic_mb(lora, 1, 1, 0)[0] < 1.05 * 400.0


def row(method, peak, fits=True):
    return Row(method, 10**6 if method == "full" else 10**3, peak, 1.0, 10.0, 1.0, fits, True)


def test_recommend_full_where_it_fits_with_room_else_the_leanest_that_fits():
    assert recommend([row("full", 500), row("lora", 400)], 1000)[0] == "full"
    assert recommend([row("full", 900), row("lora", 400), row("ia3", 300)], 1000)[0] == "ia3"
    chosen, why = recommend([row("full", 2000, False)], 1000)
    assert chosen is None and "train.batch_size" in why


def test_a_calibration_of_another_probe_version_is_not_reused(tmp_path, monkeypatch):
    """What the probe measures changed (its shapes, where its base is read): a calibration
    an older probe made must be measured again, not mixed with the new accounting."""
    from lmtune.config import load_config
    from lmtune.plan import calibrate

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    cfg = load_config(None, [])
    key = calibrate.calibration_key(cfg, str(tmp_path), 2)
    assert calibrate.calibration_key(cfg, str(tmp_path), 2) == key
    monkeypatch.setattr(calibrate, "PROBE_VERSION", calibrate.PROBE_VERSION + 1)
    assert calibrate.calibration_key(cfg, str(tmp_path), 2) != key


def test_the_logged_steps_are_read_in_order_without_validation_rows(tmp_path):
    import json

    from lmtune.plan.measure import logged_steps

    rows = [{"step": 1, "samples_per_s": 8.0}, {"step": 2, "samples_per_s": 16.0},
            {"step": 2, "val_loss": 1.5}, {"step": 3, "samples_per_s": 4.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert logged_steps(path, 16) == [2.0, 1.0, 4.0]  # 16 rows a step / rows per second


def test_a_run_checkpoints_at_each_epoch_end_and_every_n_steps_once_each():
    assert checkpoints(560, 320, 0) == 2  # the first epoch's end and the last step
    assert checkpoints(100, 320, 0) == 1  # a run shorter than an epoch: its last step
    assert checkpoints(640, 320, 100) == 8  # steps 100-600, and 320 and 640
    assert checkpoints(640, 320, 160) == 4  # 160 and 480 beside the epochs' ends


def test_cold_steps_count_what_they_take_beyond_warm_steps_of_the_same_shape():
    out = {"early_steps": [1.0, 0.8], "before_validation_steps": [0.5, 0.4, 0.6],
           "after_validation_steps": [1.2, 0.6]}
    assert cold_seconds(out) == pytest.approx((0.8, 0.8))
    out["after_validation_steps"] = [0.45, 0.5]  # faster than warm: nothing to add
    assert cold_seconds(out)[1] == 0.0


def test_a_new_shape_costs_its_first_steps_share_beyond_warm_steps():
    def point(rows, width, first, warm):
        return {"rows": rows, "width": width, "first_seconds": first,
                "backward_seconds": warm - 0.1, "update_seconds": 0.1}

    pts = [point(8, 64, 5.0, 1.0),  # the probe's first shape: warmed before it was timed
           point(16, 64, 1.2, 1.0), point(8, 128, 2.6, 2.0),
           point(8, 128, 9.0, 2.0),  # the rows and width of the one before: not new
           point(8, 32, 0.4, 0.5)]  # faster than warm: no extra
    assert new_shape_share(pts) == pytest.approx((0.2 + 0.3 + 0.0) / 3)
    assert new_shape_share(pts[:1]) == 0.0


def test_each_batch_shape_counts_once_and_the_first_batch_not_at_all():
    batches = [Batch(32, 16, 0), Batch(32, 24, 0), Batch(32, 16, 0), Batch(32, 24, 0),
               Batch(8, 24, 0), Batch(32, 64, 0)]
    seconds = [1.0, 2.0, 1.5, 2.5, 0.5, 4.0]
    assert first_of_shapes(batches, seconds) == pytest.approx(2.0 + 0.5 + 4.0)


def test_available_memory_is_the_lower_of_memavailable_and_the_cgroup_limits_room(
        tmp_path, monkeypatch):
    import torch

    from lmtune.plan.shape import MB, available_mb

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU host's memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   20480000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text(f"{1024 * MB}\n")
    assert available_mb(str(meminfo), str(cgroup)) == 20000.0  # no limit: MemAvailable
    (cgroup / "memory.max").write_text(f"{4096 * MB}\n")  # a container of 4 GiB, 1 used
    assert available_mb(str(meminfo), str(cgroup)) == 3072.0
    (cgroup / "memory.max").write_text(f"{64000 * MB}\n")  # a limit above the machine's
    assert available_mb(str(meminfo), str(cgroup)) == 20000.0
    assert available_mb(str(meminfo), str(tmp_path / "no-cgroup")) == 20000.0

"""Model-behaviour tests of the whole prediction (forecaster + correction + error paths) on known cases."""

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from features import schema as s
from training.bundle import ModelBundle
from training.predict import predict_series

START = datetime(2026, 10, 12, tzinfo=UTC)  # a Monday, 09:00 KST, no holiday that week
STEP = 5


def frame(values: np.ndarray) -> pl.DataFrame:
    ts = [START + timedelta(minutes=STEP * i) for i in range(values.size)]
    return pl.DataFrame({s.TS: ts, s.VALUE: values}).with_columns(
        pl.col(s.TS).dt.cast_time_unit("us"))


def fitted(values: np.ndarray, sid: str = "app/jvm_heap_pct", **params) -> ModelBundle:
    from training.forecast.forecaster import SeriesForecaster

    model = SeriesForecaster(**params).fit(frame(values))
    return ModelBundle({"data_fingerprint": "test"}, {sid: model}, {})


def recent_of(values: np.ndarray, n_hist: int, hours: float = 1.0):
    """The observations of the last ``hours`` before index ``n_hist`` (exclusive)."""
    k = int(hours * 60 / STEP)
    return [(START + timedelta(minutes=STEP * i), float(values[i]))
            for i in range(n_hist - k, n_hist)]


N_DAYS = 5
N = N_DAYS * 288
DAY = np.arange(N + 288) * STEP / 1440
RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def ramp():
    y = 20 + 0.5 * DAY * 24 + RNG.normal(0, 0.3, DAY.size)  # +0.5 per hour, up to 92 %
    return y, fitted(y[:N])


def test_linear_ramp_crossing_time(ramp):
    y, bundle = ramp
    level_now = 20 + 0.5 * DAY[N - 1] * 24  # the noise-free level at the last observation
    p = predict_series(bundle, "app/jvm_heap_pct", level_now + 1.0, "above", 240,
                       recent=recent_of(y, N))
    assert p.minutes_to_threshold == pytest.approx(120, abs=20)  # 1.0 at 0.5/h
    assert p.earliest_minutes <= p.minutes_to_threshold <= p.latest_minutes
    assert p.probability > 0.8
    assert p.driver in ("trend", "recent_drift", "recent_level")


def test_offset_in_recent_observations_shifts_the_answer(ramp):
    y, bundle = ramp
    threshold = y[N - 1] + 1.5
    base = predict_series(bundle, "app/jvm_heap_pct", threshold, "above", 300, recent=recent_of(y, N))
    shifted = [(t, v + 0.5) for t, v in recent_of(y, N)]
    higher = predict_series(bundle, "app/jvm_heap_pct", threshold, "above", 300, recent=shifted)
    # 0.5 higher is an hour earlier at 0.5 per hour
    assert base.minutes_to_threshold - higher.minutes_to_threshold == pytest.approx(60, abs=15)
    assert higher.level_correction == pytest.approx(base.level_correction + 0.5, abs=0.05)


def test_ramp_under_a_daily_cycle_names_the_coming_peak():
    # a strong office-hour peak on workdays; asked at 06:00 KST Friday, the 10:00 peak crosses
    hour_kst = ((np.arange(DAY.size) * STEP / 60) + 9) % 24
    peak = 30 * np.exp(-((hour_kst - 10) ** 2) / 4)
    weekday = ((DAY + 9 / 24).astype(int)) % 7 < 5
    y = 40 + peak * weekday + RNG.normal(0, 0.5, DAY.size)
    n = (3 * 24 + 21) * 60 // STEP  # Friday 06:00 KST: history ends here
    bundle = fitted(y[:n], sid="app/cpu_pct")
    p = predict_series(bundle, "app/cpu_pct", 60, "above", 300, recent=recent_of(y, n))
    assert p.minutes_to_threshold is not None and 120 <= p.minutes_to_threshold <= 300
    assert p.driver == "seasonality"
    assert p.probability > 0.8


def test_spike_noise_near_the_threshold_gets_honest_odds():
    y = 50 + RNG.normal(0, 0.5, DAY.size)
    spikes = RNG.random(DAY.size) < 0.02
    y[spikes] += 6  # occasional spikes reach 56
    bundle = fitted(y[:N], sid="app/gc_time_pct")
    near = predict_series(bundle, "app/gc_time_pct", 54, "above", 120, recent=recent_of(y, N))
    far = predict_series(bundle, "app/gc_time_pct", 70, "above", 120, recent=recent_of(y, N))
    # the mean path stays below, but over 2 hours a spike is likely; if one comes, any time
    assert 0.3 < near.probability <= 1.0
    assert 0 < near.earliest_minutes <= near.minutes_to_threshold <= near.latest_minutes <= 120
    assert near.latest_minutes - near.earliest_minutes >= 30
    assert far.probability < 0.05


def test_falling_apdex_with_direction_below():
    y = 0.97 - 0.002 * DAY * 24 + RNG.normal(0, 0.0003, DAY.size)  # -0.002 per hour
    bundle = fitted(y[:N], sid="app/apdex")
    threshold = y[N - 1] - 0.004
    p = predict_series(bundle, "app/apdex", threshold, "below", 240, recent=recent_of(y, N))
    assert p.minutes_to_threshold == pytest.approx(120, abs=25)
    assert p.direction == "below" and p.probability > 0.8


def test_flat_series_below_threshold_gives_none():
    y = 30 + RNG.normal(0, 0.2, DAY.size)
    bundle = fitted(y[:N], sid="app/mem_pct")
    p = predict_series(bundle, "app/mem_pct", 90, "above", 240, recent=recent_of(y, N))
    assert p.minutes_to_threshold is None and p.probability == 0.0
    assert p.earliest_minutes is None and p.drivers == [] or p.probability == 0.0


def test_already_crossed(ramp):
    y, bundle = ramp
    p = predict_series(bundle, "app/jvm_heap_pct", y[N - 1] - 2, "above", 60, recent=recent_of(y, N))
    assert p.already_crossed and p.minutes_to_threshold == 0 and p.probability == 1.0


def test_horizon_beyond_the_learned_errors_is_refused(ramp):
    _, bundle = ramp
    with pytest.raises(ValueError, match="beyond the 360 min"):
        predict_series(bundle, "app/jvm_heap_pct", 99, "above", 600)


def test_short_history_falls_back_to_linear_and_still_answers():
    y = 40 + 0.02 * np.arange(200) * STEP  # 0.1 per 5 min, about 17 hours: too short for Prophet
    bundle = fitted(y, sid="app/disk_pct")
    model = bundle.forecasters["app/disk_pct"]
    assert model.kind_ == "linear" and "history" in model.fallback_reason_
    p = predict_series(bundle, "app/disk_pct", y[-1] + 1.2, "above", 240, recent=recent_of(y, 200))
    assert p.model_kind == "linear"
    assert p.minutes_to_threshold == pytest.approx(60, abs=5)


@pytest.fixture(scope="module")
def estimator(ramp):
    from training.predict import CrossingPredictor

    y, _ = ramp
    return CrossingPredictor().fit(frame(y[:N]), series_id="app/jvm_heap_pct")


def test_notebook_estimator_is_the_scheduled_jobs_model_as_served(ramp, estimator, tmp_path):
    """The estimator trains as `prealert train` does, and a saved-and-loaded copy answers the same."""
    from training.predict import history_frame
    from training.train import TrainConfig, train_bundle

    y, _ = ramp
    model = estimator.model_
    assert model.kind_ == "prophet"
    assert estimator.bundle_.manifest["series"]["app/jvm_heap_pct"]["error_paths_from"] == "holdout"
    job = train_bundle(history_frame(frame(y[:N]), "app/jvm_heap_pct"), TrainConfig(n_jobs=1)).bundle
    estimator.save(tmp_path / "bundle")
    served = ModelBundle.load(tmp_path / "bundle")
    for threshold, direction in ((y[N - 1] + 1.0, "above"), (y[N - 1] + 6.0, "above"),
                                 (y[N - 1] - 3.0, "below")):
        a = estimator.predict(threshold, direction, 240, recent=recent_of(y, N)).as_dict()
        for other in (job, served):
            b = predict_series(other, "app/jvm_heap_pct", threshold, direction, 240,
                               recent=recent_of(y, N)).as_dict()
            a.pop("model_version", None), b.pop("model_version")
            assert a == b


def test_notebook_estimator_takes_pandas_and_epoch_times(ramp, estimator):
    import pandas as pd

    from training.predict import CrossingPredictor, history_frame

    y, _ = ramp
    plain = frame(y[:N]).rename({"ts": "timestamp"})
    epochs = plain.with_columns(pl.col("timestamp").dt.epoch("ms"))
    assert history_frame(plain.to_pandas(), "app/jvm_heap_pct").equals(
        history_frame(epochs, "app/jvm_heap_pct"))
    indexed = plain.to_pandas().set_index("timestamp")
    assert history_frame(indexed, "app/jvm_heap_pct").equals(history_frame(plain, "app/jvm_heap_pct"))
    recent = recent_of(y, N)
    as_epochs = [(int(t.timestamp()), v) for t, v in recent]
    as_ms = [(pd.Timestamp(t).value // 10**6, v) for t, v in recent]
    want = estimator.predict(y[N - 1] + 1.0, recent=recent).as_dict()
    assert estimator.predict(y[N - 1] + 1.0, recent=as_epochs).as_dict() == want
    assert estimator.predict(y[N - 1] + 1.0, recent=as_ms).as_dict() == want
    with pytest.raises(ValueError, match="time column"):
        CrossingPredictor().fit(pl.DataFrame({"when": [1, 2, 3], "value": [1.0, 2.0, 3.0]}))
    with pytest.raises(ValueError, match="could not be read"):
        history_frame(pl.DataFrame({"timestamp": ["2026-01-01", "soon", "2026-01-03"],
                                    "value": [1.0, 2.0, 3.0]}))


def test_alert_is_the_rule_over_the_answers_at_the_earlier_checks(ramp):
    y, bundle = ramp
    rule = bundle.alert_rule
    threshold = y[N - 1] + 1.0  # about two hours ahead at 0.5 per hour
    now = predict_series(bundle, "app/jvm_heap_pct", threshold, "above", 240,
                         recent=recent_of(y, N, hours=1.5))
    every = int(rule.every_minutes / STEP)
    checks = [predict_series(bundle, "app/jvm_heap_pct", threshold, "above", 240,
                             recent=recent_of(y, N - k * every, hours=1.5))
              for k in range(rule.lookback_checks, -1, -1)]
    holds = np.array([c.probability >= c.alarm_probability for c in checks])
    assert checks[-1].probability == now.probability
    assert now.alert == bool(rule.firing(holds)[-1]) and now.alert
    assert "for 10m" in now.alert_rule and "keep_firing_for 15m" in now.alert_rule


def test_a_single_check_blip_does_not_alert(ramp):
    y, bundle = ramp
    threshold = y[N - 1] + 3.0  # six hours ahead: out of reach within two
    recent = recent_of(y, N, hours=1.5)
    recent[-1] = (recent[-1][0], threshold - 0.2)  # only the latest observation jumps
    p = predict_series(bundle, "app/jvm_heap_pct", threshold, "above", 120, recent=recent)
    assert p.probability >= p.alarm_probability  # the latest check alone would warn
    assert not p.alert
    calm = predict_series(bundle, "app/jvm_heap_pct", threshold, "above", 120,
                          recent=recent_of(y, N, hours=1.5))
    assert calm.probability < calm.alarm_probability and not calm.alert


def test_observation_times_naive_aware_or_text_mean_the_same_utc_instant():
    from datetime import timezone

    from training.predict import _as_datetime64

    kst = timezone(timedelta(hours=9))
    aware = datetime(2026, 10, 12, 9, 0, 0, 123456, tzinfo=UTC)
    same = [aware, aware.replace(tzinfo=None), aware.astimezone(kst), aware.isoformat(),
            "2026-10-12T18:00:00.123456+09:00"]
    got = _as_datetime64(same)
    assert (got == np.datetime64("2026-10-12T09:00:00.123456", "us")).all()
    assert _as_datetime64([]).shape == (0,)


def test_the_rule_shrinks_to_what_the_observations_cover(ramp):
    y, bundle = ramp
    threshold = y[N - 1] + 1.0
    one = predict_series(bundle, "app/jvm_heap_pct", threshold, "above", 240,
                         recent=recent_of(y, N, hours=STEP / 60))
    assert one.alert == (one.probability >= one.alarm_probability)
    assert "for 0m" in one.alert_rule and "shortened from" in one.alert_rule
    # four observations 5 minutes apart cover the checks 0-15 min back: the rule fits into them
    part = predict_series(bundle, "app/jvm_heap_pct", threshold, "above", 240,
                          recent=recent_of(y, N, hours=20 / 60))
    assert "for 10m" in part.alert_rule and "keep_firing_for 5m" in part.alert_rule
    full = predict_series(bundle, "app/jvm_heap_pct", threshold, "above", 240,
                          recent=recent_of(y, N, hours=1.5))
    assert "shortened" not in full.alert_rule


def test_an_alert_held_by_keep_firing_for_says_so(ramp):
    """P above the alarm for the rule's checks, then an observation falls back: still firing, and said."""
    y, bundle = ramp
    threshold = y[N - 1] + 1.0
    recent = recent_of(y, N, hours=1.5)
    firing = predict_series(bundle, "app/jvm_heap_pct", threshold, "above", 240, recent=recent)
    assert firing.alert and firing.keep_firing_minutes_left is None
    fallen = recent + [(recent[-1][0] + timedelta(minutes=STEP), threshold - 8.0)]
    p = predict_series(bundle, "app/jvm_heap_pct", threshold, "above", 240, recent=fallen)
    assert p.probability < p.alarm_probability and p.alert
    assert p.keep_firing_minutes_left == bundle.alert_rule.keep_firing_minutes - STEP
    assert "keep_firing_for" in p.sentence() and f"{p.keep_firing_minutes_left:g} min" in p.sentence()


def test_an_answer_says_whether_and_how_it_is_calibrated(ramp):
    from training.predict import CrossingPredictor

    y, bundle = ramp
    plain = predict_series(bundle, "app/jvm_heap_pct", y[N - 1] + 1.0, "above", 240,
                           recent=recent_of(y, N))
    assert not plain.calibrated and plain.calibration_note.startswith("uncalibrated")
    assert plain.calendar == "Asia/Seoul, KR public holidays"
    # a daily cycle crosses its own upper quantiles every day: the holdout replay calibrates
    cycle = 50 + 10 * np.sin(2 * np.pi * DAY) + RNG.normal(0, 0.5, DAY.size)
    est = CrossingPredictor().fit(frame(cycle[:N]), series_id="app/cpu_pct")
    covered = est.model_.calibration_for(60)
    assert covered.n_fitted > 0
    inside = est.predict(sum(covered.above) / 2, "above", 60, recent=recent_of(cycle, N))
    far = est.predict(covered.above[1] + 50.0, "above", 60, recent=recent_of(cycle, N))
    assert inside.calibrated and inside.calibration_note.startswith("calibrated: isotonic")
    # a threshold beyond those the replay tried keeps the calibration (and its alarm), saying so
    assert far.calibrated and "extrapolation" in far.calibration_note
    assert far.alarm_probability == inside.alarm_probability
    short = fitted(y[:200], sid="app/disk_pct")
    fallback = predict_series(short, "app/disk_pct", y[199] + 1.0, "above", 240,
                              recent=recent_of(y, 200))
    assert not fallback.calibrated and "linear model" in fallback.calibration_note

"""Crossing times at the check's minute of the hour: an hourly spike keeps its place in the answer."""

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from features import schema as s
from training.bundle import ModelBundle
from training.forecast.correction import error_paths_with_origins, hourly_phases, minute_of_hour
from training.predict import predict_series
from training.predict_many import Query, predict_many
from training.threshold import PathPhases, crossing_distribution, phase_restricted

START = datetime(2026, 10, 12, tzinfo=UTC)
SPIKE_MINUTE = 22
SID = "node-1/disk_pct"


def test_minute_of_hour_and_path_origins():
    ts = np.datetime64("2026-10-12T03:00", "us") + np.arange(180) * np.timedelta64(1, "m")
    assert minute_of_hour(ts)[[0, 22, 61, 179]].tolist() == [0, 22, 1, 59]
    r = np.random.default_rng(0).normal(0, 1, ts.size)
    r[50:53] = np.nan
    paths, origins = error_paths_with_origins(r, 1.0, 10, n_paths=40)
    assert paths.shape == (40, 10) and origins.shape == (40,)
    # each path is the residuals after its origin, less that origin's correction: no gap inside
    assert not ((origins + 1 <= 52) & (origins + 10 >= 50)).any()
    assert np.isfinite(paths).all()


def test_only_residuals_with_an_hourly_pattern_keep_their_phases():
    rng = np.random.default_rng(3)
    ts = np.datetime64("2026-10-12T00:00", "us") + np.arange(3 * 1440) * np.timedelta64(1, "m")
    origins = np.arange(100, 4000, 37)
    noise = rng.normal(0, 1, ts.size)
    drift = np.cumsum(rng.normal(0, 0.1, ts.size))  # slow wander, no fixed minute
    spiky = noise.copy()
    spiky[(minute_of_hour(ts) == 22) & (rng.random(ts.size) < 0.5)] += 6  # a cron job, some hours
    assert hourly_phases(noise, ts, origins) is None
    assert hourly_phases(noise + drift, ts, origins) is None
    found = hourly_phases(spiky, ts, origins)
    np.testing.assert_array_equal(found, minute_of_hour(ts[origins]))
    assert found.dtype == np.int16


def test_phase_matched_paths_time_the_crossing_and_leave_the_probability():
    minutes = np.arange(1, 61, dtype=np.float64)
    # two kinds of path: ones that spike 17 steps ahead (begun at minute 5) and ones at 47 (minute 35)
    errors = np.zeros((40, 60))
    errors[:20, 16] = 10.0
    errors[20:, 46] = 10.0
    path_minutes = np.array([5] * 20 + [35] * 20, dtype=np.int16)
    point = np.full((1, 60), 50.0)
    every = crossing_distribution(minutes, point, errors, 55.0, "above")
    at5 = crossing_distribution(minutes, point, errors, 55.0, "above",
                                phases=PathPhases(np.array([5]), path_minutes))
    at34 = crossing_distribution(minutes, point, errors, 55.0, "above",
                                 phases=PathPhases(np.array([34]), path_minutes))
    assert every.probability[0] == at5.probability[0] == at34.probability[0] == 1.0
    assert at5.minutes[0] == at5.earliest_minutes[0] == at5.latest_minutes[0] == 17
    assert at34.minutes[0] == 47
    assert every.earliest_minutes[0] == 17 and every.latest_minutes[0] == 47
    # too few matched crossings: every path times it
    first = np.array([[3, -1, -1, 7]])
    np.testing.assert_array_equal(phase_restricted(first, np.array([[True, True, False, False]])), first)


def _spiky(n_days: float, rng) -> np.ndarray:
    """Disk usage near 50 % with a cron job's spike to 60 % at minutes 22-23 of every hour."""
    n = int(n_days * 1440)
    minute = np.arange(n) % 60
    y = 50 + rng.normal(0, 0.3, n)
    y[(minute == SPIKE_MINUTE) | (minute == SPIKE_MINUTE + 1)] += 10
    return y


@pytest.fixture(scope="module")
def spiky_bundles(tmp_path_factory):
    from training.forecast.forecaster import SeriesForecaster

    y = _spiky(4, np.random.default_rng(7))
    n_hist = y.size - 60 * 5  # history ends five hours before the data does
    ts = [START + timedelta(minutes=i) for i in range(n_hist)]
    frame = pl.DataFrame({s.TS: ts, s.VALUE: y[:n_hist]}).with_columns(
        pl.col(s.TS).dt.cast_time_unit("us"))
    model = SeriesForecaster(max_horizon_minutes=120).fit(frame)
    trained = ModelBundle({"data_fingerprint": "test"}, {SID: model}, {})
    loaded = ModelBundle.load(trained.save(tmp_path_factory.mktemp("bundle") / "spiky"))
    return y, n_hist, trained, loaded


def _recent(y, end: int):
    return [(START + timedelta(minutes=i), float(y[i])) for i in range(end - 60, end)]


@pytest.mark.slow
def test_an_hourly_spike_is_answered_at_its_minute_after_save_and_load(spiky_bundles):
    y, n_hist, trained, loaded = spiky_bundles
    model = loaded.forecasters[SID]
    assert model.error_path_minutes_ is not None
    np.testing.assert_array_equal(model.error_path_minutes_, trained.forecasters[SID].error_path_minutes_)
    assert model.error_path_minutes_.shape == (model.error_paths_.shape[0],)
    queries, expect = [], []
    for end in range(n_hist + 5, n_hist + 240, 37):  # checks at several minutes of the hour
        now_minute = (end - 1) % 60  # the last observation's minute
        if SPIKE_MINUTE - 1 <= now_minute <= SPIKE_MINUTE + 2:
            continue  # at or just before the spike
        expect.append((SPIKE_MINUTE - now_minute) % 60)
        queries.append(Query(SID, 55.0, "above", 60, recent=_recent(y, end)))
    single = [predict_series(loaded, q.series_id, q.threshold, q.direction, q.horizon_minutes,
                             recent=q.recent) for q in queries]
    batch = predict_many(loaded, queries)
    errors = []
    for want, one, many in zip(expect, single, batch, strict=True):
        assert one.as_dict() == many.as_dict()  # the single and batch paths agree
        assert one.minutes_to_threshold is not None
        assert one.earliest_minutes <= want + 1 and one.latest_minutes >= want - 1, (want, one)
        errors.append(abs(one.minutes_to_threshold - want))
    assert max(errors) <= 4, (expect, [p.minutes_to_threshold for p in single])
    # the same bundle without the paths' phases (as older bundles load) smears the spike
    model.error_path_minutes_ = None
    try:
        old = [predict_series(loaded, q.series_id, q.threshold, q.direction, q.horizon_minutes,
                              recent=q.recent) for q in queries]
    finally:
        model.error_path_minutes_ = trained.forecasters[SID].error_path_minutes_.copy()
    old_errors = [abs(p.minutes_to_threshold - w) for p, w in zip(old, expect, strict=True)]
    assert np.mean(old_errors) > np.mean(errors) + 5
    assert [p.probability for p in old] == [p.probability for p in single]

"""Training cost: Prophet sees a bounded number of points (means over a coarser step), the rest keeps
the series' own resolution, error paths are built only for the origins kept, and a model fitted
without uncertainty sampling answers the same after a save and load."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from features import schema as s
from training.forecast.correction import (
    _every_finite_path,
    error_paths_with_origins,
    rolling_corrections,
)
from training.forecast.forecaster import SeriesForecaster


def _every_path_then_pick(r, step, horizon, n_paths, window=60.0, damping=60.0):
    """The error paths as first written (kept for overflows): every path, drop non-finite, pick."""
    n_h = max(1, int(round(horizon / step)))
    level, slope = rolling_corrections(r, step, window)
    origins = np.arange(n_h, r.size - n_h)
    if origins.size == 0:
        return np.empty((0, n_h)), np.empty(0, dtype=np.int64)
    e, picked = _every_finite_path(r, level, slope, origins, np.arange(1, n_h + 1) * step, damping,
                                   n_paths)
    return (e - np.median(e, axis=0, keepdims=True) if e.shape[0] else e), picked


@pytest.mark.parametrize("seed", range(12))
def test_error_paths_are_bit_for_bit_those_of_every_path_then_pick(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 6000))
    r = np.cumsum(rng.normal(size=n))
    r[rng.random(n) < [0.0, 0.001, 0.02, 0.3][seed % 4]] = np.nan
    step, horizon = float(rng.choice([1, 5, 15])), float(rng.choice([60, 360]))
    for n_paths in (7, 200, 100_000):
        got, origins = error_paths_with_origins(r, step, horizon, n_paths)
        want, picked = _every_path_then_pick(r, step, horizon, n_paths)
        assert got.shape == want.shape and np.array_equal(got, want)
        # and each path's origin (its minute of the hour is stored with it) is the one picked
        np.testing.assert_array_equal(origins, picked)


def _minute_series(days: float, seed: int = 5) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = int(days * 1440)
    t0 = datetime(2026, 9, 7, tzinfo=UTC)
    hours = np.arange(n) / 60
    y = 50 + 10 * np.sin(2 * np.pi * hours / 24) + 0.01 * hours + rng.normal(0, 1, n)
    ts = pl.datetime_range(t0, t0 + timedelta(minutes=n - 1), timedelta(minutes=1), time_zone="UTC",
                           eager=True)
    return pl.DataFrame({s.TS: ts, s.VALUE: y})


def test_prophet_is_fitted_on_means_of_a_coarser_step_and_the_rest_keeps_the_series_resolution():
    frame = _minute_series(4)
    model = SeriesForecaster(min_history_hours=24, fit_max_points=500).fit(frame)
    assert model.kind_ == "prophet"
    assert model.fit_step_minutes_ == 15.0  # 4 days / 500 points = 11.5 min -> the next step, 15
    assert len(model.model_.history) == 4 * 96
    assert model.step_minutes_ == 1.0 and model.n_points_ == frame.height
    assert model.error_paths_.shape[1] == 360  # a 360-minute horizon at 1 minute
    # the means sit at the mean time of their minutes: the daily cycle keeps its phase
    truth = 50 + 10 * np.sin(2 * np.pi * np.arange(frame.height) / 60 / 24) + 0.01 * np.arange(
        frame.height) / 60
    assert np.abs(model.expected(frame[s.TS].to_numpy()) - truth).mean() < 0.3
    # the default: up to 28 days at 5 minutes; 4 days at 1 minute fit as they are, 14 at 5 minutes
    assert SeriesForecaster(min_history_hours=24).fit(frame).fit_step_minutes_ == 1.0
    assert SeriesForecaster(min_history_hours=24).fit(_minute_series(14)).fit_step_minutes_ == 5.0


def test_prophet_sees_only_the_last_fit_history_days():
    model = SeriesForecaster(min_history_hours=24, fit_history_days=2, fit_max_points=None
                             ).fit(_minute_series(4))
    history = model.model_.history["ds"]
    assert (history.max() - history.min()) < timedelta(days=2)
    assert model.n_points_ == 4 * 1440 and model.fit_step_minutes_ == 1.0


def test_without_uncertainty_sampling_a_model_answers_the_same_after_save_and_load():
    frame = _minute_series(3)
    model = SeriesForecaster(min_history_hours=24).fit(frame)
    assert model.uncertainty_samples == 0
    loaded = SeriesForecaster.from_json(model.to_json())
    ahead = frame[s.TS].to_numpy()[-1] + np.arange(1, 241) * np.timedelta64(1, "m")
    for with_interval in (False, True):
        a, b = model.predict(ahead, with_interval), loaded.predict(ahead, with_interval)
        assert a.equals(b)
    band = model.predict(ahead)
    assert (band["yhat_lower"] < band["yhat"]).all() and (band["yhat"] < band["yhat_upper"]).all()
    assert loaded.fit_step_minutes_ == model.fit_step_minutes_
    assert np.array_equal(loaded.error_paths_, model.error_paths_)


def test_the_fallback_fitted_on_purpose_records_why():
    model = SeriesForecaster().fit_fallback(_minute_series(1), "fit failed: ran past the time limit")
    assert model.kind_ == "linear" and model.fallback_reason_.startswith("fit failed")
    assert model.error_paths_.shape[0] == 0

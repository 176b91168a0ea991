"""Training cost without changing what is trained: Prophet's MAP solved in-process reaches Stan's
optimum, the one-pass holdout replay equals the replay per horizon, and whole entities are batched."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl
import pytest

from features import schema as s
from training.evaluation.replay import (
    best_timing,
    calibrate_on_replay,
    replay_outcomes,
    rolling_corrections,
)
from training.fanout import batches_of
from training.forecast import prophet_map
from training.forecast.forecaster import SeriesForecaster
from training.threshold import DEFAULT_ALARM, UNBOUNDED
from training.train import holdout_outcomes, holdout_timings, holdout_truths


def office_series(days: float = 16.0, step_minutes: int = 5, seed: int = 3, jump: float = 0.0
                  ) -> pl.DataFrame:
    """A workday office-hour peak, quieter weekends, a trend that bends (and a level jump)."""
    rng = np.random.default_rng(seed)
    n = int(days * 1440 / step_minutes)
    minutes = np.arange(n) * step_minutes
    hour, day = (minutes / 60 + 9) % 24, (minutes / 60 + 9) // 24
    peak = np.exp(-((hour - 13) / 3) ** 2) * np.where(day % 7 >= 5, 0.3, 1.0)
    trend = 0.5 * minutes / 1440 - 0.8 * np.maximum(minutes / 1440 - days / 2, 0)
    y = (40 + 20 * peak + trend + jump * (minutes > minutes[-1] * 0.7)
         + np.cumsum(rng.normal(0, 0.05, n)) + rng.normal(0, 1.5, n))
    t0 = datetime(2026, 9, 7, tzinfo=UTC)
    return pl.DataFrame({s.TS: [t0 + timedelta(minutes=int(m)) for m in minutes], s.VALUE: y},
                        schema_overrides={s.TS: pl.Datetime("us", "UTC")})


def _objective(params: dict, data: dict) -> float:
    z = prophet_map.design(data)
    w = np.concatenate([np.ravel(params[k]) for k in ("k", "m", "delta", "beta")])
    return prophet_map.neg_log_posterior(
        w, float(np.ravel(params["sigma_obs"])[0]), z, np.asarray(data["y"], dtype=np.float64),
        np.asarray(data["sigmas"], dtype=np.float64), float(data["tau"]),
        int(np.asarray(data["t_change"]).size))


@pytest.mark.parametrize("jump", [0.0, 15.0])
def test_the_in_process_map_reaches_stans_optimum_and_forecasts_the_same(jump, monkeypatch):
    from prophet.models import CmdStanPyBackend

    frame = office_series(jump=jump)
    fits = {}
    for solver, backend in (("stan", CmdStanPyBackend), ("map", prophet_map.MapBackend)):
        seen = []
        real = backend.fit

        def recording(self, stan_init, stan_data, _real=real, _seen=seen, **kwargs):
            _seen.append(stan_data)
            return _real(self, stan_init, stan_data, **kwargs)

        monkeypatch.setattr(backend, "fit", recording)
        fits[solver] = (SeriesForecaster(fit_solver=solver).fit(frame), seen[-1])
        monkeypatch.undo()
    (stan, data), (mine, data_map) = fits["stan"], fits["map"]
    assert mine.kind_ == stan.kind_ == "prophet"
    assert isinstance(mine.model_.stan_backend, prophet_map.MapBackend)
    assert np.array_equal(np.asarray(data["X"]), np.asarray(data_map["X"]))  # the same problem
    # the same objective, at least as low as where Stan's L-BFGS stopped
    assert _objective(mine.model_.params, data) <= _objective(stan.model_.params, data) + 1e-3
    ts = frame[s.TS].to_numpy()
    scale = float(frame[s.VALUE].std())
    assert np.max(np.abs(mine.expected(ts) - stan.expected(ts))) < 0.05 * scale
    assert set(mine.model_.params) == set(stan.model_.params)
    assert all(mine.model_.params[k].shape == stan.model_.params[k].shape for k in stan.model_.params)


def test_the_map_backend_hands_what_it_cannot_solve_to_stan():
    data = {"trend_indicator": 1, "s_m": [0.0]}
    assert not prophet_map.solvable(data)
    assert not prophet_map.solvable({"trend_indicator": 0, "s_m": [0.0, 1.0]})
    assert prophet_map.solvable({"trend_indicator": 0, "s_m": [0.0, 0.0]})

    class Stan:
        stan_fit = "stan's"

        def fit(self, stan_init, stan_data, **kwargs):
            return {"from": "stan"}

    backend = prophet_map.MapBackend(Stan())
    assert backend.fit({}, data) == {"from": "stan"} and backend.stan_fit == "stan's"


def test_an_unknown_fit_solver_is_refused():
    with pytest.raises(ValueError, match="fit_solver"):
        SeriesForecaster(fit_solver="adam")


@pytest.mark.parametrize("seed", range(4))
def test_the_one_pass_holdout_replay_equals_the_replay_per_horizon(seed):
    rng = np.random.default_rng(seed)
    n, step = int(rng.integers(300, 1500)), float(rng.choice([1.0, 5.0]))
    y = 50 + np.cumsum(rng.normal(0, 0.6, n)) + 8 * np.sin(np.arange(n) * step / 180)
    y[rng.random(n) < 0.02] = np.nan
    expected = y + rng.normal(0, 2, n)
    expected[rng.random(n) < 0.01] = np.nan
    horizons = [h for h in (30, 60, 120, 240, 360) if h / step < n / 3]
    paths = rng.normal(0, 2, (int(rng.integers(20, 120)), int(max(horizons) / step)))
    finite = y[np.isfinite(y)]
    targets = [(float(np.quantile(finite, q)), "above") for q in (0.8, 0.95)]
    targets += [(float(np.quantile(finite, q)), "below") for q in (0.2, 0.05)]
    idx = np.arange(0, n, int(rng.integers(1, 6)))
    fast = holdout_outcomes(y, expected, idx, step, horizons, paths, targets)
    for h in horizons:
        slow = replay_outcomes(y, expected, idx, step, h, paths, targets)
        assert len(fast[h]) == len(slow)
        for a, b in zip(fast[h], slow, strict=True):
            assert np.array_equal(a.probability, b.probability, equal_nan=True)
            assert np.array_equal(a.crossed, b.crossed) and np.array_equal(a.beyond, b.beyond)
        assert any(o.crossed.any() for o in slow)  # the comparison saw crossings


@pytest.mark.parametrize("seed", range(4))
def test_training_chooses_the_crossing_time_quantile_as_the_backtest_does(seed):
    """The holdout's timing, worked out only at the warned crossings, is the one the backtest's
    full replay (every check's crossing times) chooses with the same calibration."""
    rng = np.random.default_rng(seed)
    n, step = int(rng.integers(600, 1500)), 5.0
    y = 50 + np.cumsum(rng.normal(0, 0.6, n)) + 8 * np.sin(np.arange(n) * step / 180)
    y[rng.random(n) < 0.02] = np.nan
    expected = y + rng.normal(0, 2, n) + 3 * np.sin(np.arange(n) * step / 97)  # late and early
    paths = rng.normal(0, 2, (int(rng.integers(40, 120)), int(120 / step))).cumsum(axis=1) / 3
    finite = y[np.isfinite(y)]
    targets = [(float(np.quantile(finite, q)), "above") for q in (0.8, 0.95)]
    targets += [(float(np.quantile(finite, q)), "below") for q in (0.2, 0.05)]
    idx = np.arange(0, n, 1)
    bounds = UNBOUNDED  # training's one-pass replay holds nothing in a range
    corrections = rolling_corrections(y - expected, step)
    chosen = set()
    horizons = [30, 60, 120]  # every horizon's crossing times from one walk of the longest
    fast = holdout_outcomes(y, expected, idx, step, horizons, paths, targets)
    calibrations = {h: calibrate_on_replay(fast[h], DEFAULT_ALARM) for h in horizons}
    evidence = holdout_timings(y, expected, corrections, idx, step, paths, targets, fast,
                               calibrations, bounds)
    # training's way: true minutes once and the replay's running extremes choose the walked paths
    extremes: dict = {}
    truths = holdout_truths(y, idx, step, horizons, targets)
    shared = holdout_outcomes(y, expected, idx, step, horizons, paths, targets, corrections,
                              truths, extremes)
    assert set(extremes) == {"rows", "highs", "lows"}
    for h in horizons:
        for a, b in zip(shared[h], fast[h], strict=True):
            assert np.array_equal(a.probability, b.probability, equal_nan=True)
            assert np.array_equal(a.crossed, b.crossed)
    pruned = holdout_timings(y, expected, corrections, idx, step, paths, targets, shared,
                             calibrations, bounds, truths, extremes)
    for h in horizons:
        for field in ("probability", "counts", "errors"):
            assert np.array_equal(getattr(pruned[h], field), getattr(evidence[h], field))
    got = {h: evidence[h].best(calibrations[h].alarm) for h in horizons}
    for h in horizons:
        full = replay_outcomes(y, expected, idx, step, h, paths, targets, bounds)
        assert calibrate_on_replay(full, DEFAULT_ALARM) == dataclasses.replace(calibrations[h],
                                                                              timing=got[h])
        chosen.add(got[h])
        # and under any level a smoothing may serve, as the backtest would choose it there
        for alarm in (0.15, 0.35, 0.8):
            served = dataclasses.replace(calibrations[h], alarm=alarm)
            assert evidence[h].best(alarm) == best_timing(full, served)
    assert chosen != {0.5}  # the replay chose another quantile than the median somewhere


def test_batches_hold_whole_entities_of_about_the_batch_size():
    items = [(f"e{i}", None) for i in range(6)]
    sizes = [10, 10, 3, 25, 1, 1]
    got = batches_of(items, workers=2, batch_size=20, sizes=sizes)
    assert [[k for k, _ in b] for b in got] == [["e0", "e1"], ["e2"], ["e3"], ["e4", "e5"]]
    assert [k for b in got for k, _ in b] == [k for k, _ in items]
    with pytest.raises(ValueError, match="one size per item"):
        batches_of(items, workers=2, sizes=[1])


def test_the_cached_component_matrix_is_prophets_own():
    from prophet import Prophet

    frame = office_series(days=4)
    fitted = SeriesForecaster().fit(frame).model_  # fitted under the cache (after a first fit)
    SeriesForecaster().fit(frame)
    again = SeriesForecaster().fit(frame).model_
    own = Prophet()  # Prophet's own, uncached, on the same features
    for name, props in fitted.seasonalities.items():
        own.seasonalities[name] = dict(props)
    features, _, cols, modes = own.make_all_seasonality_features(fitted.history)
    assert "regressor_column_matrix" not in vars(again)  # the cache is gone after the fit
    for model in (fitted, again):
        assert model.train_component_cols.equals(cols)
        assert model.component_modes == modes


def test_a_remembered_forecast_is_the_forecast_and_a_refit_forgets_it():
    frame = office_series(days=6)
    ts = frame[s.TS].to_numpy()
    plain = SeriesForecaster().fit(frame)
    model = SeriesForecaster().remember_expected().fit(frame)
    first = model.expected(ts)
    first[:] = 0.0  # a caller writing into its answer does not change the next one
    assert np.array_equal(model.expected(ts), plain.expected(ts))
    assert np.array_equal(model.expected(ts[:100]), plain.expected(ts[:100]))
    shorter = frame.head(frame.height - 300)
    model.fit(shorter)  # a new fit: the old forecast is not answered again
    assert np.array_equal(model.expected(ts), SeriesForecaster().fit(shorter).expected(ts))
    assert not np.array_equal(model.expected(ts), plain.expected(ts))
    model.remember_expected(False)
    assert model._expected_memo_ is None


def test_the_cached_fourier_features_are_prophets_own():
    from prophet import Prophet

    dates = pd.Series(pd.date_range("2026-09-07", periods=500, freq="5min"))
    model = Prophet()
    prophet_map._FOURIER.clear()
    with prophet_map.cached_fourier(model):
        cold = model.make_seasonality_features(dates[:300], 7.0, 3, "weekly")
        # half seen before, half new; the cache's rows are not the caller's array
        cold.iloc[:, :] = 0.0
        warm = model.make_seasonality_features(dates[150:], 7.0, 3, "weekly")
    assert "make_seasonality_features" not in vars(model)
    own = Prophet.make_seasonality_features(dates[150:].reset_index(drop=True), 7.0, 3, "weekly")
    assert list(warm.columns) == list(own.columns)
    assert np.array_equal(warm.to_numpy(), own.to_numpy())


def test_a_fit_from_cached_features_is_the_fit_from_fresh_ones():
    frame = office_series(days=15)
    prophet_map._FOURIER.clear()
    fresh = SeriesForecaster().fit(frame)
    prophet_map._FOURIER.clear()
    SeriesForecaster().fit(frame.head(frame.height - 288))  # a trial's times: a prefix
    warm = SeriesForecaster().fit(frame)
    assert fresh.prophet_json() == warm.prophet_json()

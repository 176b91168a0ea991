"""The numpy point forecast equals Prophet's own ``predict(...)["yhat"]``, before and after JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import polars as pl
import pytest

from features import schema as s
from training.forecast.forecaster import SeriesForecaster, to_prophet_frame
from training.forecast.point_model import ProphetPointModel, UnsupportedProphetModel, point_model_or_none

RTOL = 1e-6
START = datetime(2026, 9, 21, tzinfo=UTC)  # 10 days over Chuseok (Thu 24th, Fri 25th are holidays)
FIVE_MIN = np.timedelta64(5 * 60_000_000, "us")
ONE_MIN = np.timedelta64(60_000_000, "us")


def _utc64(t: datetime) -> np.datetime64:
    return np.datetime64(t.replace(tzinfo=None), "us")


def _synthetic(rng: np.random.Generator, days: int = 10) -> pl.DataFrame:
    """A trend that steepens on day 6, a weekend dip, an office-hour peak on workdays only."""
    ts = _utc64(START) + np.arange(days * 288) * FIVE_MIN
    local = to_prophet_frame(ts, "Asia/Seoul")
    hour = local["ds"].dt.hour.to_numpy() + local["ds"].dt.minute.to_numpy() / 60
    day = np.arange(ts.size) / 288
    trend = 40 + 0.5 * day + np.where(day > 6, 2.0 * (day - 6), 0.0)
    weekly = np.where(local["ds"].dt.day_of_week.to_numpy() >= 5, -3.0, 0.0)
    daily = np.where(local["workday"], 12 * np.exp(-(((hour - 14) / 3) ** 2)),
                     2 * np.sin(2 * np.pi * hour / 24))
    y = trend + weekly + daily + rng.normal(0, 0.8, ts.size)
    return pl.DataFrame({s.TS: ts, s.VALUE: y}).with_columns(
        pl.col(s.TS).dt.replace_time_zone("UTC"))


@pytest.fixture(scope="module")
def forecaster() -> SeriesForecaster:
    frame = _synthetic(np.random.default_rng(20260921))
    model = SeriesForecaster(uncertainty_samples=0).fit(frame)
    assert model.kind_ == "prophet", model.fallback_reason_
    return model


@pytest.fixture(scope="module")
def query_ts(forecaster) -> np.ndarray:
    """History on its 5-minute grid, then two weeks of 1-minute steps past the end."""
    last = _utc64(forecaster.last_ts_)
    history = _utc64(START) + np.arange(10 * 288) * FIVE_MIN
    return np.concatenate([history, last + np.arange(1, 14 * 1440 + 1) * ONE_MIN])


def _prophet_yhat(model: SeriesForecaster, ts: np.ndarray) -> np.ndarray:
    frame = to_prophet_frame(ts, model.timezone, None, model.holidays_country)
    return model.model_.predict(frame)["yhat"].to_numpy()


def test_seoul_frame_is_utc_plus_nine_with_holidays_off(query_ts):
    frame = to_prophet_frame(query_ts, "Asia/Seoul")
    assert (frame["ds"].to_numpy() - query_ts == np.timedelta64(9, "h")).all()
    weekday_off = frame["offday"] & (frame["ds"].dt.day_of_week < 5)
    assert set(frame.loc[weekday_off, "ds"].dt.date.astype(str)) >= {"2026-09-24", "2026-09-25",
                                                                     "2026-10-05", "2026-10-09"}


def test_point_model_equals_prophet_predict(forecaster, query_ts):
    frame = to_prophet_frame(query_ts, "Asia/Seoul")
    point = ProphetPointModel.from_prophet(forecaster.model_)
    np.testing.assert_allclose(point.yhat(frame["ds"], frame), _prophet_yhat(forecaster, query_ts),
                               rtol=RTOL, atol=0)


def test_trend_equals_prophet_trend(forecaster, query_ts):
    frame = to_prophet_frame(query_ts, "Asia/Seoul")
    point = ProphetPointModel.from_prophet(forecaster.model_)
    expected = forecaster.model_.predict(frame)["trend"].to_numpy()
    np.testing.assert_allclose(point.trend(frame["ds"].to_numpy()), expected, rtol=RTOL, atol=0)
    assert np.abs(point.deltas).max() > 1e-3  # the fit did find the trend change


def test_forecaster_predict_uses_point_model_and_matches_prophet(forecaster, query_ts):
    assert forecaster.point_model_ is not None
    fc = forecaster.predict(query_ts, with_interval=False)
    assert fc.columns == [s.TS, "yhat", "yhat_lower", "yhat_upper"]
    assert (fc[s.TS].dt.replace_time_zone(None).to_numpy() == query_ts).all()
    np.testing.assert_allclose(fc["yhat"].to_numpy(), _prophet_yhat(forecaster, query_ts),
                               rtol=RTOL, atol=0)
    assert fc["yhat"].equals(fc["yhat_lower"], check_names=False)


def test_unsorted_times_keep_their_order(forecaster, query_ts, rng):
    shuffled = rng.permutation(query_ts[:2000])
    fast = forecaster.predict(shuffled, with_interval=False)["yhat"].to_numpy()
    saved, forecaster.point_model_ = forecaster.point_model_, None
    try:
        slow = forecaster.predict(shuffled, with_interval=False)["yhat"].to_numpy()
    finally:
        forecaster.point_model_ = saved
    expected = dict(zip(query_ts[:2000].tolist(), _prophet_yhat(forecaster, query_ts[:2000]),
                        strict=True))
    np.testing.assert_allclose(fast, [expected[t] for t in shuffled.tolist()], rtol=RTOL, atol=0)
    np.testing.assert_allclose(slow, fast, rtol=RTOL, atol=0)


def test_dst_frame_with_repeated_local_hour_matches_prophet(forecaster):
    # Seoul has no DST; Berlin's fall-back hour makes naive local times repeat and go backwards
    ts = _utc64(datetime(2026, 10, 24, 22, tzinfo=UTC)) + np.arange(600) * ONE_MIN
    frame = to_prophet_frame(ts, "Europe/Berlin")
    assert (np.diff(frame["ds"].to_numpy()) < np.timedelta64(0)).any()
    point = ProphetPointModel.from_prophet(forecaster.model_)
    expected = forecaster.model_.predict(frame)  # sorted by ds, stable
    order = np.argsort(frame["ds"].to_numpy(), kind="stable")
    np.testing.assert_allclose(point.yhat(frame["ds"], frame)[order], expected["yhat"].to_numpy(),
                               rtol=RTOL, atol=0)


def test_json_round_trip_rederives_the_point_model(forecaster, query_ts):
    loaded = SeriesForecaster.from_json(forecaster.to_json())
    assert loaded.point_model_ is not None
    fc = loaded.predict(query_ts, with_interval=False)["yhat"].to_numpy()
    np.testing.assert_allclose(fc, _prophet_yhat(loaded, query_ts), rtol=RTOL, atol=0)
    np.testing.assert_allclose(
        fc, forecaster.predict(query_ts, with_interval=False)["yhat"].to_numpy(), rtol=RTOL, atol=0)


def test_point_model_survives_json(forecaster, query_ts):
    point = ProphetPointModel.from_prophet(forecaster.model_)
    again = ProphetPointModel.from_dict(json.loads(json.dumps(point.to_dict())))
    frame = to_prophet_frame(query_ts, "Asia/Seoul")
    assert (again.yhat(frame["ds"], frame) == point.yhat(frame["ds"], frame)).all()


def test_missing_condition_column_is_named(forecaster):
    point = ProphetPointModel.from_prophet(forecaster.model_)
    frame = to_prophet_frame(_utc64(START) + np.arange(3) * ONE_MIN, "Asia/Seoul")
    with pytest.raises(ValueError, match="workday"):
        point.yhat(frame["ds"], {"offday": frame["offday"]})


# --- other Prophet configurations: tiny daily series, fit in well under a second each ----------
def _daily(rng, n: int = 120) -> pd.DataFrame:
    ds = pd.date_range("2025-01-01", periods=n, freq="D")
    y = 20 + 0.1 * np.arange(n) + 3 * np.sin(2 * np.pi * np.arange(n) / 7) + rng.normal(0, 0.5, n)
    return pd.DataFrame({"ds": ds, "y": y})


def _prophet(**kwargs):
    from prophet import Prophet

    return Prophet(yearly_seasonality=False, daily_seasonality=False, uncertainty_samples=0,
                   **kwargs)


@pytest.mark.parametrize("kwargs", [
    {"seasonality_mode": "multiplicative"},
    {"scaling": "minmax"},
    {"weekly_seasonality": False, "n_changepoints": 0},
])
def test_other_linear_configurations_match_prophet(rng, kwargs):
    history = _daily(rng)
    model = _prophet(**kwargs).fit(history)
    future = model.make_future_dataframe(periods=30, include_history=True)
    np.testing.assert_allclose(ProphetPointModel.from_prophet(model).yhat(future["ds"], future),
                               model.predict(future)["yhat"].to_numpy(), rtol=RTOL, atol=0)


def test_regressors_holidays_and_logistic_growth_are_left_to_prophet(rng):
    history = _daily(rng)
    with_regressor = _prophet()
    with_regressor.add_regressor("load")
    with_holidays = _prophet(holidays=pd.DataFrame({"holiday": "x", "ds": history["ds"][::30]}))
    logistic = _prophet(growth="logistic")
    for model, frame in ((with_regressor, history.assign(load=rng.normal(size=len(history)))),
                         (with_holidays, history), (logistic, history.assign(cap=100.0))):
        model.fit(frame)
        with pytest.raises(UnsupportedProphetModel):
            ProphetPointModel.from_prophet(model)
        assert point_model_or_none(model) is None


def test_unfitted_model_is_rejected():
    with pytest.raises(ValueError, match="not fitted"):
        ProphetPointModel.from_prophet(_prophet())

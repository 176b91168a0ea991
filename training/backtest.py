"""Rolling-origin replay of a fitted forecaster against predict_linear and the last value."""

from __future__ import annotations

import numpy as np
import polars as pl

from features import schema as s
from training.baselines import predict_linear
from training.correction import realtime_correction
from training.forecast import SeriesForecaster


def rolling_origin_errors(
    model: SeriesForecaster,
    frame: pl.DataFrame,
    start,
    horizon_minutes: int = 60,
    every_minutes: int = 60,
    linear_window_minutes: int = 60,
) -> dict[str, float]:
    """Replay deployment after ``start``: every ``every_minutes`` forecast the next horizon.

    At each origin the model only sees observations up to the origin (through the same
    real-time level correction serving applies); ``predict_linear`` fits its window ending at
    the origin. Returns the mean absolute error of each predictor over all (origin, minute).
    """
    frame = frame.drop_nulls(s.VALUE).sort(s.TS)
    ts = frame[s.TS].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    y = frame[s.VALUE].to_numpy()
    start64 = np.datetime64(start.replace(tzinfo=None), "us")
    lookback = np.timedelta64(int(linear_window_minutes * 60e6), "us")
    span = ts >= start64 - lookback
    expected = np.full(ts.shape, np.nan)
    expected[span] = model.expected(ts[span])
    horizon = np.timedelta64(int(horizon_minutes * 60e6), "us")
    errs = {"model": [], "predict_linear": [], "last_value": []}
    origin = start64
    n_origins = 0
    while origin + horizon <= ts[-1]:
        past = ts <= origin
        ahead = (ts > origin) & (ts <= origin + horizon)
        if past.any() and ahead.any():
            n_origins += 1
            correction = realtime_correction(ts[past], (y - expected)[past])
            minutes_ahead = (ts[ahead] - origin).astype(np.float64) / 60e6
            errs["model"].append(np.abs(expected[ahead] + correction.at(minutes_ahead) - y[ahead]))
            pl_pred = predict_linear(ts[past], y[past], origin, linear_window_minutes, ts[ahead])
            errs["predict_linear"].append(np.abs(pl_pred - y[ahead]))
            errs["last_value"].append(np.abs(y[past][-1] - y[ahead]))
        origin += np.timedelta64(int(every_minutes * 60e6), "us")
    out = {f"mae_{k}": float(np.nanmean(np.concatenate(v))) if v else float("nan")
           for k, v in errs.items()}
    out["n_origins"] = n_origins
    return out

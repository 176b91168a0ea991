"""Time one 240-minute forecast: Prophet's ``predict`` against the numpy point model, and ``predict_series``.

``predict_series`` answers the alert rule's earlier checks too; the one-check line is the answer alone.

Run: ``uv run python bench/predict_bench.py [--repeats 200] [--days 14]``. Fits one model on a
seeded synthetic 5-minute series in memory (nothing is written), warms every path up, then
prints the median wall time of each over ``--repeats`` calls. No assertions: numbers only.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from features import schema as s
from training.bundle import ModelBundle
from training.forecast.forecaster import SeriesForecaster, horizon_grid, to_prophet_frame
from training.forecast.point_model import ProphetPointModel
from training.predict import predict_series
from training.threshold import AlertRule

SERIES_ID = "bench-svc/cpu_pct"
START = datetime(2026, 9, 1, tzinfo=UTC)


def synthetic_series(days: int, seed: int) -> pl.DataFrame:
    """A rising trend with a weekday office-hour peak, on a 5-minute UTC grid."""
    rng = np.random.default_rng(seed)
    ts = np.datetime64(START.replace(tzinfo=None), "us") + np.arange(days * 288) * np.timedelta64(5, "m")
    local = to_prophet_frame(ts, "Asia/Seoul")
    hour = local["ds"].dt.hour.to_numpy() + local["ds"].dt.minute.to_numpy() / 60
    day = np.arange(ts.size) / 288
    y = (40 + 0.8 * day + np.where(local["workday"], 15 * np.exp(-(((hour - 14) / 3) ** 2)), 0.0)
         + rng.normal(0, 1.0, ts.size))
    return pl.DataFrame({s.TS: ts, s.VALUE: y}).with_columns(pl.col(s.TS).dt.replace_time_zone("UTC"))


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per path (median)")
    parser.add_argument("--days", type=int, default=14, help="days of 5-minute history to fit on")
    parser.add_argument("--horizon", type=int, default=240, help="forecast minutes, 1-minute grid")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic series")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # pandas 3 deprecations inside Prophet would drown the table

    frame = synthetic_series(args.days, args.seed)
    t = time.perf_counter()
    model = SeriesForecaster().fit(frame)  # default uncertainty_samples, as serving uses
    fit_s = time.perf_counter() - t
    if model.kind_ != "prophet" or model.point_model_ is None:
        raise SystemExit(f"expected a Prophet model with a point model, got {model.kind_!r}")
    now = model.last_ts_
    grid = horizon_grid(now, args.horizon)
    prophet_frame = to_prophet_frame(grid, model.timezone, None, model.holidays_country)
    point: ProphetPointModel = model.point_model_
    prophet = model.model_

    def prophet_point():
        saved = prophet.uncertainty_samples
        prophet.uncertainty_samples = 0
        try:
            return prophet.predict(prophet_frame)["yhat"]
        finally:
            prophet.uncertainty_samples = saved

    recent_ts = [now - timedelta(minutes=59 - i) for i in range(60)]
    expected = model.predict(np.array([np.datetime64(r.replace(tzinfo=None), "us") for r in recent_ts]),
                             with_interval=False)["yhat"].to_numpy()
    recent = list(zip(recent_ts, (expected + 1.0).tolist(), strict=True))
    bundle = ModelBundle({"data_fingerprint": "bench"}, {SERIES_ID: model})
    checks = bundle.alert_rule.lookback_checks + 1
    single = ModelBundle({"data_fingerprint": "bench", "alert_rule": AlertRule(0, 0).to_dict()},
                         {SERIES_ID: model})
    threshold = float(expected.max() + 20)

    r = args.repeats
    rows = {
        "prophet predict, point only (uncertainty_samples=0)": median_ms(prophet_point, r),
        f"prophet predict, with intervals ({prophet.uncertainty_samples} samples)":
            median_ms(lambda: prophet.predict(prophet_frame), max(r // 10, 5), warmup=2),
        "numpy point model yhat (frame prebuilt)": median_ms(
            lambda: point.yhat(prophet_frame["ds"], prophet_frame), r),
        "to_prophet_frame (local time + workday/offday)": median_ms(
            lambda: to_prophet_frame(grid, model.timezone, None, model.holidays_country), r),
        "SeriesForecaster.predict(with_interval=False)": median_ms(
            lambda: model.predict(grid, with_interval=False), r),
        f"predict_series, 60 recent obs, alert rule ({checks} checks)": median_ms(
            lambda: predict_series(bundle, SERIES_ID, threshold, "above", args.horizon, recent),
            max(r // 10, 5), warmup=2),
        "predict_series, 60 recent obs, one check (no for/keep_firing)": median_ms(
            lambda: predict_series(single, SERIES_ID, threshold, "above", args.horizon, recent),
            max(r // 10, 5), warmup=2),
    }
    diff = np.max(np.abs(point.yhat(prophet_frame["ds"], prophet_frame) - prophet_point().to_numpy()))

    print(f"fit: {args.days} days x 288 points in {fit_s:.1f} s; horizon {grid.size} x 1 min; "
          f"median of {r} calls (interval paths: {max(r // 10, 5)})")
    width = max(map(len, rows))
    for name, ms in rows.items():
        print(f"  {name:<{width}}  {ms:9.3f} ms")
    full = rows["SeriesForecaster.predict(with_interval=False)"]
    core = rows["numpy point model yhat (frame prebuilt)"]
    base = rows["prophet predict, point only (uncertainty_samples=0)"]
    print(f"speed-up over prophet point predict: {base / core:.0f}x (numpy core), "
          f"{base / full:.0f}x (SeriesForecaster.predict)")
    print(f"max |numpy - prophet| yhat on the horizon: {diff:.2e}")


if __name__ == "__main__":
    main()

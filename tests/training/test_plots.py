"""The plots draw the service's answer: same corrected forecast, same paths, same interval, clipped."""

from datetime import timedelta
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pytest

from training.bundle import ModelBundle
from training.forecast.correction import realtime_correction
from training.plots import (
    metric_range,
    nearest_crossings,
    plot_crossing_distribution,
    plot_drivers,
    plot_forecast,
    plot_prediction,
)
from training.predict import forecast_detail, predict_series

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "sample" / "golden_bundle"
HEAP = "golden-app/jvm_heap_pct"


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.load(GOLDEN)


def drifting_recent(bundle: ModelBundle, sid: str, offset: float, drift_per_step: float):
    """The model's last training points, shifted and drifting: a level and a drift to correct."""
    ts, y = bundle.forecasters[sid].training_tail(60)
    return [(t.astype("datetime64[us]").item(), float(v) + offset + drift_per_step * i)
            for i, (t, v) in enumerate(zip(ts, y, strict=True))]


def inverted_cdf(x: np.ndarray, q: float) -> float:
    x = np.sort(x[np.isfinite(x)])
    return float(x[max(int(np.ceil(q * x.size)) - 1, 0)])


def artist(ax, gid: str):
    found = [a for a in ax.get_children() if a.get_gid() == gid]
    assert len(found) == 1, f"expected one artist {gid!r}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("offset, drift", [(0.0, 0.0), (1.0, 0.2), (-2.0, -0.3)])
def test_the_detail_is_the_answer_and_its_paths(bundle, offset, drift):
    recent = drifting_recent(bundle, HEAP, offset, drift)
    answer = predict_series(bundle, HEAP, 68.0, "above", 240, recent=recent)
    detail = forecast_detail(bundle, HEAP, 68.0, "above", 240, recent=recent)
    assert detail.prediction == answer and not answer.already_crossed
    # the quantiles of the per-path crossing times are the answer's interval and median
    assert inverted_cdf(detail.crossing_minutes, 0.1) == answer.earliest_minutes
    assert inverted_cdf(detail.crossing_minutes, 0.5) == answer.minutes_to_threshold
    assert inverted_cdf(detail.crossing_minutes, 0.9) == answer.latest_minutes
    # the point forecast carries the real-time correction: the level and the damped drift
    model = bundle.forecasters[HEAP]
    obs_ts = np.array([np.datetime64(t, "us") for t, _ in recent])
    obs_y = np.array([v for _, v in recent])
    correction = realtime_correction(obs_ts, obs_y - model.expected(obs_ts))
    assert detail.correction == correction
    assert round(correction.level, 4) == answer.level_correction
    np.testing.assert_allclose(detail.point - model.expected(detail.ts), correction.at(detail.minutes))
    np.testing.assert_allclose(detail.paths, detail.point + model.error_paths_[:, :detail.ts.size])
    # damped: the drift followed for 4 hours adds less than a straight line would
    added = (detail.point - detail.model_alone - correction.level)[-1]
    assert abs(added) < abs(correction.slope_per_min) * 240 or correction.slope_per_min == 0


def test_the_forecast_plot_draws_the_answers_interval_and_median(bundle):
    detail = forecast_detail(bundle, HEAP, 68.0, "above", 240,
                             recent=drifting_recent(bundle, HEAP, 1.0, 0.1))
    p = detail.prediction
    assert p.minutes_to_threshold is not None and p.latest_minutes is not None
    fig = plot_forecast(detail, history=bundle.forecasters[HEAP].training_tail(24 * 60))
    ax = fig.axes[0]
    median = artist(ax, "median").get_xdata()
    assert list(median) == [np.datetime64(p.crossing_at.replace(tzinfo=None), "us")] * 2
    span = artist(ax, "interval")
    x0, x1 = span.get_x(), span.get_x() + span.get_width()
    assert mdates.num2date(x0) == p.earliest_at and mdates.num2date(x1) == p.latest_at
    assert p.crossing_at == p.now + timedelta(minutes=p.minutes_to_threshold)
    np.testing.assert_array_equal(artist(ax, "point").get_ydata(), detail.point)
    assert artist(ax, "threshold").get_ydata()[0] == 68.0
    assert p.sentence() == ax.get_title()


def test_the_band_is_clipped_to_the_metrics_range(bundle):
    # a heap already near 100 %: the plausible paths would run past what a percentage can be,
    # and are held at it
    detail = forecast_detail(bundle, HEAP, 99.0, "above", 240,
                             recent=drifting_recent(bundle, HEAP, 98.0 - 63.0, 0.5))
    assert detail.paths.max() == 100.0
    ax = plot_forecast(detail).axes[0]
    band_y = np.concatenate([path.vertices[:, 1] for path in artist(ax, "band").get_paths()])
    assert band_y.max() <= 100.0 and band_y.min() >= 0.0
    assert artist(ax, "point").get_ydata().max() <= 100.0
    assert ax.get_ylim()[1] <= 102.0


def test_the_distribution_is_the_paths_crossing_times_with_the_answers_quantiles(bundle):
    detail = forecast_detail(bundle, HEAP, 68.0, "above", 240)
    p = detail.prediction
    ax = plot_crossing_distribution(detail).axes[0]
    drawn = sum(patch.get_height() for patch in ax.patches)
    assert drawn == np.isfinite(detail.crossing_minutes).sum() > 0
    for gid, minutes in (("earliest", p.earliest_minutes), ("median", p.minutes_to_threshold),
                         ("latest", p.latest_minutes)):
        assert artist(ax, gid).get_xdata()[0] == minutes


def test_the_drivers_plot_shows_the_answers_drivers(bundle):
    detail = forecast_detail(bundle, HEAP, 68.0, "above", 240,
                             recent=drifting_recent(bundle, HEAP, 1.0, 0.2))
    ax = plot_drivers(detail).axes[0]
    drivers = detail.prediction.drivers
    assert drivers
    bars = {label.get_text(): bar.get_width() for label, bar in zip(
        ax.get_yticklabels(), [a for a in ax.patches if a.get_gid() == "drivers"], strict=True)}
    assert bars == {d["meaning"]: d["change"] for d in drivers}


def test_linear_fallback_plots_its_gaussian_band():
    import polars as pl

    from training.forecast.forecaster import SeriesForecaster

    t0 = np.datetime64("2026-10-12T00:00", "us")
    ts = t0 + np.arange(200) * np.timedelta64(5, "m")  # 17 hours: too short for Prophet
    history = pl.DataFrame({"ts": ts, "value": 40 + 0.1 * np.arange(200)}).with_columns(
        pl.col("ts").dt.replace_time_zone("UTC"))
    model = SeriesForecaster().fit(history)
    bundle = ModelBundle({"data_fingerprint": "test"}, {"app/disk_pct": model}, {})
    detail = forecast_detail(bundle, "app/disk_pct", 61.0, "above", 240)
    p = detail.prediction
    assert p.model_kind == "linear" and detail.paths.shape[0] == 0 and detail.band is not None
    fig = plot_prediction(detail, history=history)
    assert len(fig.axes) == 3
    assert artist(fig.axes[0], "median").get_xdata()[0] == np.datetime64(
        p.crossing_at.replace(tzinfo=None), "us")
    assert "no error paths" in fig.axes[1].texts[0].get_text()


def test_metric_ranges_come_from_the_catalogue():
    assert metric_range("a/jvm_heap_pct") == (0.0, 100.0)
    assert metric_range("a/apdex") == (0.0, 1.0)
    assert metric_range("a/response_time_ms") == (0.0, float("inf"))
    assert metric_range("a/something_new") == (float("-inf"), float("inf"))


def test_nearest_crossings_come_first(bundle):
    found = nearest_crossings(bundle, n=5)
    assert [d.prediction.series_id for d in found] and len(found) <= 2
    keys = [(d.prediction.minutes_to_threshold is None, d.prediction.minutes_to_threshold or 0)
            for d in found]
    assert keys == sorted(keys)


def test_prediction_html_repr_escapes_and_says_the_answer(bundle):
    p = predict_series(bundle, HEAP, 68.0, "above", 240)
    html = p._repr_html_()
    assert p.sentence() in html and f"{p.probability:.2f}" in html
    odd = p.__class__(**{**p.as_dict(), "series_id": "<b>x</b>/jvm_heap_pct"})
    assert "<b>x</b>" not in odd._repr_html_() and "&lt;b&gt;x&lt;/b&gt;" in odd._repr_html_()

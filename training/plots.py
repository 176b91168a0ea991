"""Plots of what the service answers: forecast, threshold, crossing interval, its distribution, drivers."""

from __future__ import annotations

import logging
import math
import re
from datetime import datetime

import numpy as np

from features import schema as s
from training.bundle import ModelBundle
from training.predict import ForecastDetail, forecast_detail, history_frame, observations

log = logging.getLogger(__name__)

#: how many plausible paths a forecast plot draws one by one (the band covers them all)
SAMPLE_PATHS = 20
#: the horizon of the plots training logs, unless a model learned its errors for less
LOGGED_HORIZON_MINUTES = 240.0


def metric_range(series_id: str) -> tuple[float, float]:
    """The values a series can physically take, from the metric catalogue's kind and bounds."""
    return s.value_range(s.split_series_id(series_id)[1])


def _utc64(t: datetime) -> np.datetime64:
    return np.datetime64(t.replace(tzinfo=None), "us")


def _history_arrays(history) -> tuple[np.ndarray, np.ndarray]:
    """``(ts, value)`` of a frame (see :func:`history_frame`), of ``(ts, value)`` pairs or arrays."""
    if history is None:
        return np.array([], dtype="datetime64[us]"), np.array([])
    if isinstance(history, tuple) and len(history) == 2 and isinstance(history[0], np.ndarray):
        return history  # (ts, values) arrays, as SeriesForecaster.training_tail gives them
    if isinstance(history, list | tuple):
        return observations(history)

    frame = history_frame(history).drop_nulls(s.VALUE)
    ts = frame[s.TS].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    return ts, frame[s.VALUE].to_numpy()


def _axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def plot_forecast(detail: ForecastDetail, history=None, ax=None):
    """The forecast as the service answered it, clipped to the metric's range.

    Draws the observed history (``history``: a frame or ``(ts, value)`` pairs; values after
    ``now`` are drawn as what happened), the observations sent, the corrected point forecast,
    the P10-P90 band of the plausible paths with a few of them, the threshold, and the
    answer's crossing interval (P10-P90, shaded) and median. Clipping never moves a crossing:
    the threshold lies inside the range. Returns the figure; its artists carry ``gid``s
    (``point``, ``band``, ``median``, ``interval``, ``threshold``, ``now``) for checks.
    """
    p = detail.prediction
    lo, hi = metric_range(p.series_id)
    fig, ax = _axes(ax, (11, 4.5))
    now = _utc64(p.now)
    hist_ts, hist_y = _history_arrays(history)
    before = hist_ts <= now
    ax.plot(hist_ts[before], hist_y[before], color="0.2", lw=1, label="observed")
    if (~before).any():
        ax.plot(hist_ts[~before], hist_y[~before], color="0.55", lw=1, ls="--",
                label="what happened (not seen by the model)")
    if detail.observed.size:
        ax.plot(detail.observed_ts, detail.observed, ".", color="0.2", ms=4,
                label=f"observations sent ({detail.observed.size})")
    if detail.paths.shape[0]:
        paths = np.clip(detail.paths, lo, hi)
        for path in paths[np.linspace(0, len(paths) - 1, min(SAMPLE_PATHS, len(paths))).astype(int)]:
            ax.plot(detail.ts, path, color="C0", lw=0.5, alpha=0.25)
        band = np.quantile(paths, [0.1, 0.9], axis=0)
        band_label = f"P10-P90 of {len(paths)} plausible paths (model errors)"
    else:
        band = np.clip(np.vstack(detail.band), lo, hi)
        band_label = "P10-P90 (linear fallback's Gaussian band)"
    ax.fill_between(detail.ts, band[0], band[1], color="C0", alpha=0.2, label=band_label,
                    gid="band")
    ax.plot(detail.ts, np.clip(detail.model_alone, lo, hi), color="C0", lw=1, ls=":",
            label="model alone")
    ax.plot(detail.ts, np.clip(detail.point, lo, hi), color="C0", lw=2, gid="point",
            label="forecast (model + level + damped drift)")
    ax.axhline(p.threshold, color="red", lw=1.2, ls="--", gid="threshold",
               label=f"threshold {p.threshold:g} ({p.direction})")
    ax.axvline(now, color="0.4", lw=1, gid="now")
    if p.minutes_to_threshold is not None and not p.already_crossed:
        end = p.latest_at or _horizon_end(detail)
        ax.axvspan(_utc64(p.earliest_at), _utc64(end), color="orange", alpha=0.25, gid="interval",
                   label="crossing P10-P90" + (" (P90 beyond the horizon)" if p.latest_at is None
                                               else ""))
        ax.axvline(_utc64(p.crossing_at), color="darkorange", lw=2, gid="median",
                   label=f"crossing median ({p.minutes_to_threshold:g} min)")
    _limit_y(ax, lo, hi)
    unit = s.spec_for(s.split_series_id(p.series_id)[1]).unit
    ax.set(title=p.sentence(), xlabel="time (UTC)", ylabel=unit or "value")
    ax.title.set_fontsize(10)
    ax.legend(loc="best", fontsize=7, ncol=2)
    return fig


def _horizon_end(detail: ForecastDetail):
    return detail.ts[-1].astype(datetime)


def _limit_y(ax, lo: float, hi: float) -> None:
    """Keep the view inside the metric's range (a little margin for the lines at its edges)."""
    y0, y1 = ax.get_ylim()
    pad = 0.02 * (y1 - y0)
    ax.set_ylim(max(y0, lo - pad) if math.isfinite(lo) else y0,
                min(y1, hi + pad) if math.isfinite(hi) else y1)


def plot_crossing_distribution(detail: ForecastDetail, ax=None):
    """When the plausible paths first cross: a histogram with the answer's P10, median and P90.

    ``gid``s ``earliest``, ``median``, ``latest`` mark the answer's quantiles.
    """
    p = detail.prediction
    fig, ax = _axes(ax, (6, 3.5))
    crosses = detail.crossing_minutes[np.isfinite(detail.crossing_minutes)]
    step = float(detail.minutes[0])
    if p.already_crossed:
        ax.text(0.5, 0.5, "already crossed", ha="center", va="center", transform=ax.transAxes)
    elif not detail.paths.shape[0]:
        ax.text(0.5, 0.5, "linear fallback: no error paths, the answer uses its Gaussian band",
                ha="center", va="center", transform=ax.transAxes, wrap=True)
    elif not crosses.size:
        ax.text(0.5, 0.5, f"no plausible path crosses within {p.horizon_minutes:g} min",
                ha="center", va="center", transform=ax.transAxes)
    else:
        edges = np.arange(step / 2, p.horizon_minutes + step, step)
        ax.hist(crosses, bins=edges, color="C0", alpha=0.7,
                label=f"{crosses.size} of {detail.paths.shape[0]} paths cross")
        for gid, name, m in (("earliest", "P10", p.earliest_minutes),
                             ("median", "median", p.minutes_to_threshold),
                             ("latest", "P90", p.latest_minutes)):
            if m is not None:
                ax.axvline(m, color="darkorange", ls="-" if gid == "median" else ":",
                           lw=2 if gid == "median" else 1.2, gid=gid, label=f"{name} {m:g} min")
        ax.legend(fontsize=7)
    ax.set(title=f"crossing time if it crosses; P(reach within {p.horizon_minutes:g} min) = "
                 f"{p.probability:.2f}", xlabel="minutes from now", ylabel="paths",
           xlim=(0, p.horizon_minutes))
    ax.title.set_fontsize(9)
    return fig


def plot_drivers(detail: ForecastDetail, ax=None):
    """What moves the forecast toward the threshold by the crossing (or its closest approach)."""
    p = detail.prediction
    fig, ax = _axes(ax, (6, 3.5))
    unit = s.spec_for(s.split_series_id(p.series_id)[1]).unit
    if p.drivers:
        names = [d["meaning"] for d in p.drivers][::-1]
        changes = [d["change"] for d in p.drivers][::-1]
        ax.barh(names, changes, color="C1", gid="drivers")
        ax.axvline(0, color="0.3", lw=0.8)
    else:
        ax.text(0.5, 0.5, "nothing moves the forecast toward the threshold", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set(title="drivers toward the threshold", xlabel=f"change ({unit or 'metric unit'})")
    ax.title.set_fontsize(9)
    ax.tick_params(axis="y", labelsize=8)
    return fig


def plot_prediction(detail: ForecastDetail, history=None):
    """The forecast above, the crossing-time distribution and the drivers below, one figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 7.5), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2])
    plot_forecast(detail, history, ax=fig.add_subplot(grid[0, :]))
    plot_crossing_distribution(detail, ax=fig.add_subplot(grid[1, 0]))
    plot_drivers(detail, ax=fig.add_subplot(grid[1, 1]))
    return fig


#: the full answer is computed for this many series per plot, those nearest by the cheap margin
SHORTLIST_PER_PLOT = 10


def _shortlist(bundle: ModelBundle, k: int, horizon_minutes: float,
               margins: dict[str, float] | None = None) -> list[str]:
    """The ``k`` series (with a catalogue threshold) nearest to it by a cheap margin
    (:func:`crossing_margin`), sorted. ``margins``: worked out already (by training's workers,
    beside the fitted models), else read here from each model: full answers for every series
    cost ~65 ms each in the driver, 11 minutes for 10,000 series, for three plots.
    """
    found = []
    for sid in sorted(bundle.forecasters):
        if not math.isfinite(s.spec_for(s.split_series_id(sid)[1]).threshold):
            continue
        if len(bundle.forecasters) <= k:  # all of them: no need to rank
            found.append((0.0, sid))
            continue
        margin = margins.get(sid) if margins is not None else None
        if margin is None:
            margin = crossing_margin(sid, bundle.forecasters[sid], horizon_minutes)
        found.append((margin, sid))
    return sorted(sid for _, sid in sorted(found)[:k])


def crossing_margin(sid: str, model, horizon_minutes: float = LOGGED_HORIZON_MINUTES
                    ) -> float | None:
    """How far the point forecast plus its highest (lowest, below) error path stays from the
    catalogue threshold over the horizon after training, in units of the model's sigma (None:
    no catalogue threshold)."""
    spec = s.spec_for(s.split_series_id(sid)[1])
    if not math.isfinite(spec.threshold):
        return None
    n_h = max(1, int(round(horizon_minutes / model.step_minutes_)))
    paths = model.error_paths_[:, :n_h]
    step = np.timedelta64(int(round(model.step_minutes_ * 60e6)), "us")
    last = np.datetime64(model.last_ts_.replace(tzinfo=None), "us")
    point = model.expected(last + step * np.arange(1, (paths.shape[1] or n_h) + 1))
    if spec.direction == "above":
        reach = point + (paths.max(axis=0) if paths.shape[0] else 0.0)
        gap = spec.threshold - np.nanmax(reach)
    else:
        reach = point + (paths.min(axis=0) if paths.shape[0] else 0.0)
        gap = np.nanmin(reach) - spec.threshold
    return float(gap) / max(model.sigma_, 1e-9) if np.isfinite(gap) else math.inf


def nearest_crossings(bundle: ModelBundle, n: int = 3,
                      horizon_minutes: float = LOGGED_HORIZON_MINUTES,
                      margins: dict[str, float] | None = None) -> list[ForecastDetail]:
    """The ``n`` series whose catalogue threshold the bundle expects soonest, at the end of training.

    Ranked by: crossing expected within the horizon (median), then soonest, then most likely.
    Series of a metric without a catalogue threshold are left out; a series that cannot be
    answered is logged and skipped.
    """
    found = []
    for sid in _shortlist(bundle, SHORTLIST_PER_PLOT * n, horizon_minutes, margins):
        model = bundle.forecasters[sid]
        spec = s.spec_for(s.split_series_id(sid)[1])
        horizon = horizon_minutes
        if model.error_paths_.shape[0]:  # within the errors the model learned
            horizon = min(horizon, model.error_paths_.shape[1] * model.step_minutes_)
        try:
            found.append(forecast_detail(bundle, sid, spec.threshold, spec.direction, horizon))
        except (ValueError, KeyError) as exc:
            log.warning("no crossing plot for %s: %s", sid, exc)

    def soonest(d: ForecastDetail):
        p = d.prediction
        m = 0.0 if p.already_crossed else p.minutes_to_threshold
        return (m is None or p.probability < 0.5, math.inf if m is None else m, -p.probability)

    return sorted(found, key=soonest)[:n]


def log_crossing_plots(bundle: ModelBundle, n: int = 3,
                       margins: dict[str, float] | None = None) -> list[str]:
    """Log :func:`plot_prediction` of the ``n`` nearest crossings to the active MLflow run.

    Each series' recent training data is drawn as its history; ``margins``: see
    :func:`nearest_crossings`. Returns the artifact paths.
    """
    import mlflow

    paths = []
    for detail in nearest_crossings(bundle, n, margins=margins):
        sid = detail.prediction.series_id
        fig = plot_prediction(detail, history=bundle.forecasters[sid].training_tail(12 * 60))
        name = f"plots/crossing_{re.sub(r'[^A-Za-z0-9_.-]+', '_', sid)}.png"
        mlflow.log_figure(fig, name)
        paths.append(name)
    return paths

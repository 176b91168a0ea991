"""The prediction a bundle gives for one series: crossing time, interval, odds and anomaly score."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from features import schema as s
from training.bundle import ModelBundle
from training.forecast.correction import RealtimeCorrection, minute_of_hour, realtime_corrections
from training.forecast.forecaster import horizon_grid
from training.threshold import (
    UNBOUNDED,
    AlertRule,
    PathPhases,
    ProbabilityCalibration,
    clip_to_range,
    crossings_from_paths,
    first_crossing_index,
    minutes_to_threshold,
)


@dataclass
class Prediction:
    """One answer; times are UTC, minutes are counted from ``now``."""

    series_id: str
    model_kind: str
    now: datetime
    threshold: float
    direction: str
    horizon_minutes: float
    minutes_to_threshold: float | None
    crossing_at: datetime | None
    earliest_minutes: float | None
    latest_minutes: float | None
    earliest_at: datetime | None
    latest_at: datetime | None
    probability: float
    already_crossed: bool
    alert: bool
    alarm_probability: float
    alert_rule: str
    #: minutes ``keep_firing_for`` still holds the alert when the ``for`` condition no longer holds
    keep_firing_minutes_left: float | None
    calibrated: bool
    calibration_note: str  # how the probability was calibrated, or why it was not
    calendar: str  # the time zone and holiday calendar behind the daily and weekly shapes
    drivers: list[dict]
    driver: str | None
    level_correction: float
    trend_correction_per_min: float
    anomaly_score: float | None
    anomaly_top_metrics: list[dict]
    model_version: str

    def as_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        """The answer as an operator reads it."""
        what = f"{self.series_id} {self.direction} {self.threshold:g}"
        if self.already_crossed:
            return f"{what}: already crossed"
        return self._forecast_sentence(what) + self._held_note()

    def _held_note(self) -> str:
        if self.keep_firing_minutes_left is None:
            return ""
        return (f"; alert still on for up to {self.keep_firing_minutes_left:g} min by "
                "keep_firing_for (the probability fell below the alarm level)")

    def _forecast_sentence(self, what: str) -> str:
        if self.minutes_to_threshold is None:
            return (f"{what}: not expected within {self.horizon_minutes:g} min "
                    f"(probability {self.probability:.2f})")
        lo = "?" if self.earliest_minutes is None else f"{self.earliest_minutes:.0f}"
        hi = f">{self.horizon_minutes:g}" if self.latest_minutes is None else f"{self.latest_minutes:.0f}"
        when = f"in {self.minutes_to_threshold:.0f} min (between {lo} and {hi}"
        if self.probability < 0.5:
            return (f"{what}: unlikely within {self.horizon_minutes:g} min (probability "
                    f"{self.probability:.2f}); if it crosses, {when})")
        return f"{what} {when}, probability {self.probability:.2f})"

    def _repr_html_(self) -> str:
        """The answer as a small table in Jupyter: the sentence, then the numbers behind it."""
        from html import escape

        def minutes(m: float | None, at: datetime | None) -> str:
            return "–" if m is None else f"{m:g} min ({at:%Y-%m-%d %H:%M} UTC)"

        drivers = ", ".join(f"{d['meaning']} {d['change']:+.3g}" for d in self.drivers) or "–"
        behind = ", ".join(f"{m['metric']} z={m['z']:+.1f}" for m in self.anomaly_top_metrics)
        anomaly = "–" if self.anomaly_score is None else f"{self.anomaly_score:.2f} ({behind})"
        rows = [
            ("crossing (median)", minutes(self.minutes_to_threshold, self.crossing_at)),
            ("between (P10–P90)", f"{minutes(self.earliest_minutes, self.earliest_at)} and "
             + (f">{self.horizon_minutes:g} min" if self.latest_minutes is None
                and self.minutes_to_threshold is not None
                else minutes(self.latest_minutes, self.latest_at))),
            (f"P(reach within {self.horizon_minutes:g} min)", f"{self.probability:.2f}"),
            ("alert", f"{'yes' if self.alert else 'no'} ({self.alert_rule})"),
            ("drivers", drivers),
            ("real-time correction", f"level {self.level_correction:+.3g}, drift "
             f"{self.trend_correction_per_min:+.3g}/min (damped)"),
            ("anomaly score", anomaly),
            ("now", f"{self.now:%Y-%m-%d %H:%M} UTC"),
            ("model", f"{self.model_version} ({self.model_kind})"),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th>"
                       f"<td style='text-align:left'>{escape(v)}</td></tr>" for k, v in rows)
        return f"<p><b>{escape(self.sentence())}</b></p><table>{body}</table>"


#: fewer historical error paths than this and the answer uses the model's Gaussian band
MIN_ERROR_PATHS = 20


def answers_from_paths(model, n_steps: int) -> bool:
    """Whether the model answers a horizon of ``n_steps`` from its error paths (enough of them,
    long enough) rather than from its Gaussian band."""
    paths = model.error_paths_
    return paths.shape[0] >= MIN_ERROR_PATHS and paths.shape[1] >= n_steps


def path_phases(model, origins) -> PathPhases | None:
    """The minutes of the hour of the answers' ``origins`` (datetimes or datetime64) and of the
    model's error paths' origins, so each crossing is timed over the paths begun at its own
    minute (an hourly spike keeps its place); None for a model without them (an older bundle:
    timed over every path, as before)."""
    minutes = getattr(model, "error_path_minutes_", None)
    if minutes is None or minutes.shape[0] != model.error_paths_.shape[0]:
        return None
    at = np.array([np.datetime64(o.replace(tzinfo=None) if isinstance(o, datetime) else o, "us")
                   for o in origins], dtype="datetime64[us]")
    return PathPhases(minute_of_hour(at), minutes)


def served_calibration(model, horizon_minutes: float, use_paths: bool) -> ProbabilityCalibration:
    """The calibration (with its alarm level and ``for``) an answer at this horizon applies; the
    identity (alarm 0.5) for the Gaussian band. Kept for any threshold: ``calibration_note``
    says when it is extrapolated."""
    return model.calibration_for(horizon_minutes) if use_paths else ProbabilityCalibration()

def physical_range(series_id: str) -> tuple[float, float]:
    """The values the series' metric kind can take (percentages [0, 100], APDEX [0, 1], counts
    and rates >= 0), from the metric catalogue; unbounded for a metric it does not know."""
    try:
        metric = s.split_series_id(series_id)[1]
    except ValueError:
        return UNBOUNDED
    lo, hi = s.value_range(metric)
    return float(lo), float(hi)


DRIVER_NAMES = {
    "trend": "trend (a leak or steady growth)",
    "seasonality": "the coming daily/weekly peak",
    "recent_level": "the recent level shift",
    "recent_drift": "the recent drift",
}


def crossing_drivers(model, now: datetime, grid: np.ndarray, point: np.ndarray,
                     correction: RealtimeCorrection, minutes: float | None,
                     direction: str) -> list[dict]:
    """What moves the forecast from now to the crossing (or its closest approach), largest first.

    Contributions in the metric's unit toward the threshold: the model's trend and seasonality
    between now and then, the recent level shift, and the recent drift followed ahead.
    """
    sign = 1.0 if direction == "above" else -1.0
    if minutes is not None and minutes > 0:
        i = min(int(np.ceil(minutes / model.step_minutes_)) - 1, grid.size - 1)
    else:
        i = int(np.argmax(sign * point)) if minutes is None else 0
    both = np.array([np.datetime64(now.replace(tzinfo=None), "us"), grid[i]])
    parts = model.components(both)  # [now, then]
    changes = {
        "trend": float(parts["trend"][1] - parts["trend"][0]),
        "seasonality": float(parts["seasonality"][1] - parts["seasonality"][0]),
        "recent_level": correction.level,
        "recent_drift": float(correction.at((i + 1) * model.step_minutes_) - correction.level),
    }
    ranked = sorted(changes.items(), key=lambda kv: -sign * kv[1])
    return [{"component": k, "meaning": DRIVER_NAMES[k], "change": round(v, 4)}
            for k, v in ranked if sign * v > 0]


def _epoch_seconds(n: float) -> float:
    """An epoch count in s, ms, us or ns (told apart by magnitude, as the feature job does) in s."""
    mag = abs(n)
    return n if mag < 1e11 else n / 1e3 if mag < 1e14 else n / 1e6 if mag < 1e17 else n / 1e9


def _to_utc(t) -> datetime:
    """A datetime (naive = UTC), an ISO string, a ``numpy.datetime64`` or an epoch number, in UTC."""
    if isinstance(t, datetime):
        pass
    elif isinstance(t, np.datetime64):
        t = datetime.fromtimestamp(t.astype("datetime64[us]").astype(np.int64) / 1e6, UTC)
    elif isinstance(t, int | float | np.integer | np.floating) and not isinstance(t, bool):
        if not math.isfinite(t):
            raise ValueError(f"time {t!r} is not a finite number")
        try:
            t = datetime.fromtimestamp(_epoch_seconds(float(t)), UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"time {t!r} is out of range as an epoch") from exc
    else:
        try:
            t = datetime.fromisoformat(str(t).replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"time {str(t)[:60]!r} is not an ISO-8601 time or an epoch") from exc
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _as_datetime64(times) -> np.ndarray:
    """UTC ``datetime64[us]`` of datetimes (naive ones are UTC) or ISO strings, in one pass."""
    secs = [(t if isinstance(t, datetime) and t.tzinfo else _to_utc(t)).timestamp() for t in times]
    return np.round(np.array(secs, dtype=np.float64) * 1e6).astype(np.int64).astype("datetime64[us]")


def _at(now: datetime, minutes: float | None) -> datetime | None:
    return None if minutes is None else now + timedelta(minutes=minutes)


def predict_series(
    bundle: ModelBundle,
    series_id: str,
    threshold: float,
    direction: str,
    horizon_minutes: float,
    recent: list[tuple[datetime, float]] | None = None,
    now: datetime | None = None,
    context: dict[str, float] | None = None,
) -> Prediction:
    """Predict when ``series_id`` reaches ``threshold`` within the horizon.

    ``recent`` observations (time, value) anchor the forecast: ``now`` becomes the latest of
    them and the forecast follows their residuals (level and damped drift, see correction.py).
    Without them ``now`` defaults to the end of the training data. ``alert`` applies the
    bundle's alert rule to the checks now and every few minutes before, each answered from the
    observations up to it (see :class:`~training.threshold.AlertRule` and :func:`_covered`
    for fewer observations than the rule looks back over). ``context`` gives the
    latest values of the entity's other metrics for the anomaly score; metrics not given count
    as expected. Raises ``KeyError`` for a series the bundle does not know.
    """
    if series_id not in bundle.forecasters:
        raise KeyError(series_id)
    model = bundle.forecasters[series_id]
    obs_ts, obs_y = observations(recent)
    if obs_ts.size:
        now = _to_utc(obs_ts[-1].astype(datetime))
    elif now is None:
        now = _to_utc(model.last_ts_)
    else:
        now = _to_utc(now)

    grid = horizon_grid(now, horizon_minutes, model.step_minutes_)
    use_paths = answers_from_paths(model, grid.size)
    if model.kind_ == "prophet" and not use_paths:
        raise ValueError(
            f"horizon {horizon_minutes:g} min is beyond the {model.max_horizon_minutes:g} min "
            f"this model learned its errors for; ask for a shorter horizon")
    calibration = served_calibration(model, horizon_minutes, use_paths)
    alarm = calibration.alarm
    note = calibration_note(model, calibration, threshold, direction, use_paths)
    rule = bundle.alert_rule.with_for(calibration.for_minutes)
    # the checks the alert rule looks at, oldest first, then now
    origins = [now - timedelta(minutes=k * rule.every_minutes)
               for k in range(rule.lookback_checks, -1, -1)]
    answers = _answers_at(model, obs_ts, obs_y, threshold, direction, grid, use_paths,
                          calibration, origins, physical_range(series_id))
    holds = np.array([c.already_crossed or c.probability >= alarm for c, *_ in answers])
    rule, holds, rule_text = _covered(rule, holds, [a[-1] is not None for a in answers],
                                      bool(obs_ts.size), alarm)
    alert = bool(rule.firing(holds)[-1])
    held_left = rule.keep_firing_left(holds) if alert else None
    crossing, grid, point, correction, z_now = answers[-1]

    drivers = crossing_drivers(model, now, grid, point, correction, crossing.minutes, direction)
    score, top = anomaly_now(bundle, series_id, z_now, context, now)
    r2 = lambda v: None if v is None else round(v, 2)  # noqa: E731
    return Prediction(
        series_id=series_id, model_kind=model.kind_, now=now, threshold=threshold,
        direction=direction, horizon_minutes=horizon_minutes,
        minutes_to_threshold=r2(crossing.minutes), crossing_at=_at(now, crossing.minutes),
        earliest_minutes=r2(crossing.earliest_minutes),
        latest_minutes=r2(crossing.latest_minutes),
        earliest_at=_at(now, crossing.earliest_minutes),
        latest_at=_at(now, crossing.latest_minutes),
        probability=crossing.probability, already_crossed=crossing.already_crossed,
        alert=alert, alarm_probability=alarm, alert_rule=rule_text,
        keep_firing_minutes_left=held_left, calibrated=calibration.n_fitted > 0,
        calibration_note=note, calendar=calendar_of(model),
        drivers=drivers, driver=drivers[0]["component"] if drivers else None,
        level_correction=round(correction.level, 4),
        trend_correction_per_min=round(correction.slope_per_min, 5),
        anomaly_score=score, anomaly_top_metrics=top,
        model_version=bundle.version_label,
    )


def observations(recent) -> tuple[np.ndarray, np.ndarray]:
    """The observations sent as sorted UTC ``datetime64[us]`` times and finite values."""
    obs_ts = _as_datetime64([t for t, _ in recent or []])
    obs_y = np.array([v for _, v in recent or []], dtype=np.float64)
    order = np.argsort(obs_ts, kind="stable")
    finite = np.isfinite(obs_y[order])
    return obs_ts[order][finite], obs_y[order][finite]


def calibration_note(model, calibration: ProbabilityCalibration, threshold: float,
                     direction: str, use_paths: bool) -> str:
    """How the answer's probability is calibrated, or why it is not, in one line.

    A threshold outside those the holdout replay tried keeps the map fitted on them (it is
    pooled over thresholds: raw probability -> observed frequency) and the alarm level and
    ``for`` chosen with it: the map is extrapolated as it stands, and the note says so.
    """
    if not use_paths:
        return (f"uncalibrated: the {model.kind_} model answers from its Gaussian band "
                f"({model.fallback_reason_ or 'no historical error paths'})")
    if not calibration.n_fitted:
        return ("uncalibrated: the holdout replay held too few crossings to fit a calibration; "
                f"raw share of error paths, alarm level {calibration.alarm:g}")
    lo, hi = calibration.above if direction == "above" else calibration.below
    fitted = f"isotonic on {calibration.n_fitted} holdout checks at thresholds {lo:.4g}-{hi:.4g}"
    if calibration.covers(threshold, direction):
        return f"calibrated: {fitted}{_alarm_history(calibration)}"
    return (f"calibrated by extrapolation: {fitted} ({direction}), applied unchanged at "
            f"{threshold:g} outside that range{_alarm_history(calibration)}")


def _alarm_history(calibration: ProbabilityCalibration) -> str:
    """Where the alarm level came from when a retrain's choice was smoothed (``smoothed_alarm``):
    the replay's own choice and what it was shrunk toward."""
    chosen = calibration.alarm_chosen
    if chosen is None or abs(chosen - calibration.alarm) < 5e-4:
        return ""
    toward = [f"the previous model's level {calibration.alarm_previous:g}"
              if calibration.alarm_previous is not None else None,
              f"the metric kind's pooled level {calibration.alarm_pooled:g}"
              if calibration.alarm_pooled is not None else None]
    # bundles before the pooled level recorded only that the previous model's level was used
    prior = " and ".join(t for t in toward if t) or "the previous model's level"
    if calibration.alarm_outcomes <= 0:
        return (f"; alarm level {calibration.alarm:g} from {prior} (the holdout held too few "
                "crossings to choose one)")
    return (f"; alarm level {calibration.alarm:g}: the holdout chose {chosen:g} on "
            f"{calibration.alarm_outcomes:g} crossings, shrunk toward {prior}")


def calendar_of(model) -> str:
    """The time zone and public-holiday calendar the model's daily and weekly shapes use."""
    holidays = f"{model.holidays_country} public holidays" if model.holidays_country else \
        "no public holidays"
    return f"{model.timezone}, {holidays}"


def _covered(rule: AlertRule, holds: np.ndarray, seen: list[bool], observed: bool, alarm: float):
    """The rule over the checks the observations cover; shortened if they cover too few.

    A check before the first observation sent knows nothing the caller said, so it does not
    count: ``for`` and ``keep_firing_for`` shrink to the minutes the covered checks span
    (one observation: the alert is ``P >= alarm`` now). Without any observation every check
    is the model's alone and the whole rule applies.
    """
    if not observed or all(seen):
        return rule, holds, rule.describe(alarm)
    first = seen.index(True)  # the covered checks are the latest ones
    span = (len(seen) - 1 - first) * rule.every_minutes
    short = dataclasses.replace(rule, for_minutes=min(rule.for_minutes, span),
                                keep_firing_minutes=min(rule.keep_firing_minutes,
                                                        span - min(rule.for_minutes, span)))
    note = (f"{short.describe(alarm)}; shortened from {rule.describe(alarm)}: the observations "
            f"sent cover {span:g} min of its checks")
    return short, holds[first:], note


def _answers_at(model, obs_ts: np.ndarray, obs_y: np.ndarray, threshold: float, direction: str,
                grid: np.ndarray, use_paths: bool, calibration: ProbabilityCalibration,
                origins: list[datetime], bounds: tuple[float, float] = UNBOUNDED) -> list[tuple]:
    """The crossing as it looked at each origin, from the (finite, sorted) observations up to it.

    ``grid`` is the horizon after the last origin (now); the earlier ones are it shifted back.
    The point forecast, its paths and the fallback's band are held inside ``bounds``, the
    metric's physical range (:func:`physical_range`).

    One ``(crossing, grid, point, correction, z_now)`` per origin; an origin before the first
    observation is answered by the model alone (``z_now`` None). One forecast call covers
    every origin.
    """
    ends = [int(np.searchsorted(obs_ts, np.datetime64(o.replace(tzinfo=None), "us"), "right"))
            for o in origins]
    grids = [grid - (np.datetime64(origins[-1].replace(tzinfo=None), "us")
                     - np.datetime64(o.replace(tzinfo=None), "us")) for o in origins]
    n_obs = max(ends)
    times, where = np.unique(np.concatenate([obs_ts[:n_obs], *grids]), return_inverse=True)
    if use_paths:
        fc = {"yhat": model.expected(times)[where]}
    else:
        full = model.predict(times, with_interval=True)
        fc = {k: full[k].to_numpy()[where] for k in ("yhat", "yhat_lower", "yhat_upper")}
    n_h = grids[0].size
    minutes = np.arange(1, n_h + 1) * model.step_minutes_
    at = lambda k, i: fc[k][n_obs + i * n_h: n_obs + (i + 1) * n_h]  # noqa: E731  origin i's horizon
    resid = obs_y[:n_obs] - fc["yhat"][:n_obs]
    corrections = realtime_corrections(obs_ts[:n_obs], resid, ends)
    currents = [float(obs_y[e - 1]) if e else None for e in ends]
    zs = [resid[e - 1] / max(model.sigma_, 1e-9) if e else None for e in ends]
    offsets = [c.at(minutes) for c in corrections]
    points = clip_to_range(np.stack([at("yhat", i) + off for i, off in enumerate(offsets)]),
                           bounds)
    if use_paths:
        crossings = crossings_from_paths(minutes, points, model.error_paths_[:, :n_h], threshold,
                                         direction, currents, bounds, calibration.timing,
                                         path_phases(model, origins))
        crossings = [c if c.already_crossed else dataclasses.replace(
            c, probability=round(float(calibration.apply(c.probability)), 4)) for c in crossings]
    else:  # the linear fallback: its Gaussian band
        crossings = [minutes_to_threshold(grids[i], points[i],
                                          clip_to_range(at("yhat_lower", i) + off, bounds),
                                          clip_to_range(at("yhat_upper", i) + off, bounds),
                                          threshold, direction, origins[i], currents[i])
                     for i, off in enumerate(offsets)]
    return list(zip(crossings, grids, points, corrections, zs, strict=True))


def anomaly_now(bundle: ModelBundle, series_id: str, z_series: float | None,
                context: dict[str, float] | None, now: datetime) -> tuple[float | None, list]:
    """Score the entity's latest minute: the series' residual z plus any context metrics."""
    found = anomaly_row(bundle, series_id, z_series, context, now)
    if found is None:
        return None, []
    det, row = found
    return round(float(det.score(row)[0]), 4), det.explain(row)


def anomaly_row(bundle: ModelBundle, series_id: str, z_series: float | None,
                context: dict[str, float] | None, now: datetime) -> tuple[object, np.ndarray] | None:
    """The entity's detector and the row it scores (None when there is no detector or nothing to
    score): the series' residual z, each context metric's against its own forecaster."""
    if not bundle.detectors:
        return None
    entity, metric = s.split_series_id(series_id)
    det = bundle.detectors.get(entity)
    if det is None or (z_series is None and not context):
        return None
    row = np.zeros(len(det.metrics_))
    for i, m in enumerate(det.metrics_):
        if m == metric and z_series is not None:
            row[i] = z_series
        elif context and m in context and f"{entity}/{m}" in bundle.forecasters:
            other = bundle.forecasters[f"{entity}/{m}"]
            t = np.array([np.datetime64(now.replace(tzinfo=None), "us")])
            exp = other.expected(t)[0]
            row[i] = (context[m] - exp) / max(other.sigma_, 1e-9)
    return det, row


#: column names a notebook frame may use for the time and the value
TIME_COLUMNS = (s.TS, "timestamp", "time", "ds")
VALUE_COLUMNS = (s.VALUE, "y")


def history_frame(history, series_id: str = "series/value") -> pl.DataFrame:
    """A notebook's frame as the feature job's series frame, the one training takes.

    ``history`` is a polars or pandas frame: either the feature job's series frame (one series,
    or several with ``series_id`` naming one), or plain ``timestamp,value`` columns (also
    ``ts``/``time``/``ds`` and ``y``; a pandas ``DatetimeIndex`` counts as the time), with times
    as datetimes (naive = UTC), ISO strings or epoch numbers (s, ms, us or ns, told apart by
    magnitude). A plain frame is put on a regular grid at its median spacing, gaps left empty.
    """
    from features.ingest import as_utc

    if not isinstance(history, pl.DataFrame):
        import pandas as pd

        if not isinstance(history, pd.DataFrame):
            raise TypeError(f"history must be a polars or pandas DataFrame, not {type(history).__name__}")
        if isinstance(history.index, pd.DatetimeIndex):
            history = history.reset_index(names=next(c for c in TIME_COLUMNS if c not in history))
        history = pl.from_pandas(history)
    if all(c in history.columns for c in s.SERIES_SCHEMA):
        if history[s.SERIES_ID].n_unique() > 1:
            history = history.filter(pl.col(s.SERIES_ID) == series_id)
            if history.is_empty():
                raise ValueError(f"no rows of series {series_id!r} in the frame")
        return s.validate(history.select(list(s.SERIES_SCHEMA)), s.SERIES_SCHEMA, what="history")
    time_col = next((c for c in TIME_COLUMNS if c in history.columns), None)
    value_col = next((c for c in VALUE_COLUMNS if c in history.columns), None)
    if time_col is None or value_col is None:
        raise ValueError(f"history needs a time column (one of {list(TIME_COLUMNS)}) and a value "
                         f"column (one of {list(VALUE_COLUMNS)}); it has {history.columns}")
    frame = history.select(as_utc(pl.col(time_col), history.schema[time_col], "auto").alias(s.TS),
                           pl.col(value_col).cast(pl.Float64, strict=False).alias(s.VALUE))
    bad = frame[s.TS].null_count()
    if bad:
        raise ValueError(f"history: {bad} of {frame.height} times in column {time_col!r} "
                         "could not be read as datetimes, ISO strings or epoch numbers")
    frame = frame.sort(s.TS)
    dupes = frame.height - frame[s.TS].n_unique()
    if dupes:
        raise ValueError(f"history: {dupes} duplicate timestamps; keep one value per time "
                         "(the feature job `prealert features build` resolves duplicates)")
    if frame.height < 3:
        raise ValueError(f"history: need at least 3 observations, got {frame.height}")
    step = frame[s.TS].diff().drop_nulls().median()
    grid = pl.datetime_range(frame[s.TS][0], frame[s.TS][-1], step, eager=True,
                             time_unit="us", time_zone="UTC").alias(s.TS).to_frame()
    entity, metric = s.split_series_id(series_id)
    return grid.join(frame, on=s.TS, how="left").select(
        pl.lit(series_id).alias(s.SERIES_ID), pl.lit(entity).alias(s.ENTITY),
        pl.lit(metric).alias(s.METRIC), s.TS, pl.col(s.VALUE).fill_nan(None),
        pl.lit(1, pl.UInt32).alias(s.N_PODS), pl.lit(False).alias(s.FILLED))


class CrossingPredictor:
    """Estimator-style entry for notebooks: one series, trained and answered as the service does.

    ``CrossingPredictor().fit(history).predict(threshold, "above", 240, recent)``: ``fit`` runs
    the scheduled job's training on the one series (the holdout replay that gives the error
    paths, the probability calibration and the alarm level and ``for``), so ``predict`` answers
    exactly as a service serving the same training would. ``history``: see
    :func:`history_frame`. Keyword arguments are :class:`SeriesForecaster` hyperparameters.
    """

    def __init__(self, holdout_hours: float = 24.0, alert_rule: AlertRule | None = None,
                 **forecaster_params):
        self.holdout_hours = holdout_hours
        self.alert_rule = alert_rule
        self.forecaster_params = forecaster_params

    def fit(self, history, series_id: str = "series/value") -> CrossingPredictor:
        from training.train import TrainConfig, train_bundle

        frame = history_frame(history, series_id)
        self.series_id_ = frame[s.SERIES_ID][0]
        config = TrainConfig(holdout_hours=self.holdout_hours, n_jobs=1,
                             forecaster=dict(self.forecaster_params),
                             alert_rule=self.alert_rule or AlertRule())
        result = train_bundle(frame, config)
        if result.failed:
            raise ValueError(f"{self.series_id_}: {result.failed[self.series_id_]}")
        self.bundle_ = result.bundle
        self.backtest_ = result.backtest
        return self

    @property
    def model_(self):
        return self.bundle_.forecasters[self.series_id_]

    def predict(self, threshold: float, direction: str = "above", horizon_minutes: float = 240,
                recent: list[tuple[datetime, float]] | None = None,
                now: datetime | None = None) -> Prediction:
        return predict_series(self.bundle_, self.series_id_, threshold, direction,
                              horizon_minutes, recent=recent, now=now)

    def save(self, folder) -> None:
        """Write the model as a bundle that ``prealert serve --bundle`` serves."""
        self.bundle_.save(folder)

    def forecast_detail(self, threshold: float, direction: str = "above",
                        horizon_minutes: float = 240,
                        recent: list[tuple[datetime, float]] | None = None,
                        now: datetime | None = None) -> ForecastDetail:
        """:meth:`predict` with the forecast behind it, for plots (see :func:`forecast_detail`)."""
        return forecast_detail(self.bundle_, self.series_id_, threshold, direction,
                               horizon_minutes, recent=recent, now=now)


@dataclass(frozen=True)
class ForecastDetail:
    """The service's answer with the forecast it came from, for plots and checks.

    Everything is what :func:`predict_series` computed for ``prediction``: ``point`` is the
    forecast after the real-time correction (the model plus the level and the damped drift of
    ``correction``); ``paths`` are the plausible futures (``point`` plus each of the model's
    error paths) whose first crossings give the answer's P10/P50/P90 and (before calibration)
    its probability. The linear fallback has no paths: its answer uses ``band``, the
    corrected Gaussian P10/P90.
    """

    prediction: Prediction
    ts: np.ndarray  # forecast times after ``prediction.now``, UTC datetime64[us]
    minutes: np.ndarray  # their offsets from now
    point: np.ndarray
    correction: RealtimeCorrection
    paths: np.ndarray  # (K, n_h); (0, n_h) for the linear fallback
    band: tuple[np.ndarray, np.ndarray] | None  # the linear fallback's P10/P90, else None
    crossing_minutes: np.ndarray  # (K,) each path's first-crossing minute, NaN if it never does
    observed_ts: np.ndarray  # the finite observations sent, sorted, UTC datetime64[us]
    observed: np.ndarray

    @property
    def model_alone(self) -> np.ndarray:
        """The model's forecast before the real-time correction."""
        return self.point - self.correction.at(self.minutes)


def forecast_detail(
    bundle: ModelBundle,
    series_id: str,
    threshold: float,
    direction: str,
    horizon_minutes: float,
    recent: list[tuple[datetime, float]] | None = None,
    now: datetime | None = None,
    context: dict[str, float] | None = None,
) -> ForecastDetail:
    """:func:`predict_series`'s answer and the corrected forecast and paths it was computed from.

    The point forecast comes from the same :func:`_answers_at` call (same observations, same
    correction, same grid) as the answer's, so a plot of it shows exactly what the service
    answered; the crossing times per path are those whose quantiles are the answer's interval.
    """
    prediction = predict_series(bundle, series_id, threshold, direction, horizon_minutes,
                                recent=recent, now=now, context=context)
    model = bundle.forecasters[series_id]
    obs_ts, obs_y = observations(recent)
    grid = horizon_grid(prediction.now, horizon_minutes, model.step_minutes_)
    errors = model.error_paths_
    use_paths = answers_from_paths(model, grid.size)
    # the calibration only changes the probability, which ``prediction`` already holds
    bounds = physical_range(series_id)
    ((_, grid, point, correction, _),) = _answers_at(
        model, obs_ts, obs_y, threshold, direction, grid, use_paths, ProbabilityCalibration(),
        [prediction.now], bounds)
    minutes = np.arange(1, grid.size + 1) * model.step_minutes_
    band = None
    if use_paths:
        paths = clip_to_range(point[None, :] + errors[:, :grid.size].astype(np.float64), bounds)
    else:
        paths = np.empty((0, grid.size))
        fc = model.predict(grid, with_interval=True)
        offset = point - fc["yhat"].to_numpy()
        band = (clip_to_range(fc["yhat_lower"].to_numpy() + offset, bounds),
                clip_to_range(fc["yhat_upper"].to_numpy() + offset, bounds))
    first = first_crossing_index(paths, threshold, direction == "above")
    crossing = np.where(first >= 0, minutes[np.maximum(first, 0)], np.nan)
    return ForecastDetail(prediction, grid, minutes, point, correction, paths, band, crossing,
                          obs_ts, obs_y)

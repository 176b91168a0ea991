"""Training: fit every series' forecaster and every entity's detector, backtest, and build a bundle."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import polars as pl

from features import schema as s
from training.anomaly.detector import WorkloadAnomalyDetector
from training.bundle import ModelBundle, StoredDetectors, StoredForecasters
from training.evaluation.replay import (
    TIMING_LEVELS,
    ReplayOutcome,
    calibrate_on_replay,
    rolling_corrections,
    rolling_origin_errors,
    timing_evidence,
    true_minutes,
)
from training.fanout import ENGINES, Progress, SeriesTimeLimit, fan_out, time_limit
from training.forecast.correction import WINDOW_MINUTES as CORRECTION_WINDOW_MINUTES
from training.forecast.correction import damped, error_paths_with_origins, hourly_phases, minute_of_hour
from training.forecast.forecaster import SeriesForecaster, calendar_setting
from training.plots import crossing_margin
from training.predict import MIN_ERROR_PATHS
from training.threshold import (
    CACHED_ELEMENTS,
    DEFAULT_ALARM,
    TIMING_FLOOR,
    UNBOUNDED,
    AlertRule,
    PathPhases,
    ProbabilityCalibration,
    TimingEvidence,
    clip_to_range,
    crossing_time_quantiles,
    first_crossings,
)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Everything a training run depends on; logged to MLflow as params."""

    holdout_hours: float = 24.0  # the backtest replays this final stretch of history
    horizon_minutes: int = 60
    origin_every_minutes: int = 60
    predict_linear_window_minutes: int = 60
    until: datetime | None = None  # train only on data strictly before this instant (UTC)
    include: list[str] = field(default_factory=list)  # series ids or entities; empty = all
    n_jobs: int = 2  # local engine: worker processes; a local Ray started for the run: its CPUs
    engine: str = "local"  # "local" (a process pool) or "ray" (RAY_ADDRESS, else a local Ray)
    batch_size: int = 0  # series per task; 0 = about four tasks per worker, at most 32 series
    series_time_limit_seconds: float | None = 300.0  # a fit past this is served by the fallback
    forecaster: dict = field(default_factory=dict)  # SeriesForecaster hyperparameters
    alert_rule: AlertRule = field(default_factory=AlertRule)  # alarm and `for` chosen under it
    detector: dict = field(default_factory=dict)  # WorkloadAnomalyDetector hyperparameters

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}: choose one of {', '.join(ENGINES)}")

    def as_params(self) -> dict[str, str]:
        flat = {k: v for k, v in asdict(self).items()
                if k not in ("forecaster", "detector", "alert_rule")}
        flat.update({f"alert_rule.{k}": v for k, v in self.alert_rule.to_dict().items()})
        flat.update({f"forecaster.{k}": v for k, v in SeriesForecaster(**self.forecaster)
                     .get_params().items()})
        flat.update({f"detector.{k}": v for k, v in self.detector.items()})
        return {k: str(v) for k, v in flat.items()}


@dataclass
class TrainResult:
    bundle: ModelBundle
    backtest: pl.DataFrame  # one row per series: maes per predictor
    failed: dict[str, str]  # series id -> error, for series that got no model at all
    score: float  # median MAE ratio of prealert to predict_linear; lower is better
    #: series id -> :func:`training.plots.crossing_margin` at the end of training
    crossing_margins: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesFile:
    """Series rows in a Parquet file sorted by series id (the feature job's ``series.parquet``),
    read a batch of series at a time where they are used (in the workers): no process holds
    every row. ``start``/``end`` bound the rows' times (end exclusive), ``include`` keeps these
    series ids or entities (empty: all)."""

    path: str
    start: datetime | None = None
    end: datetime | None = None
    include: tuple[tuple[str, ...], ...] = ()  # each a list of series ids or entities to keep

    @classmethod
    def of(cls, path: str | Path) -> SeriesFile:
        """The series file of a feature job's output folder (or the file itself), its columns checked."""
        path = Path(path)
        if path.is_dir():
            path = path / "series.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no series file (run `prealert features build` first)")
        s.validate(pl.scan_parquet(path).head(0).collect(), s.SERIES_SCHEMA, what=str(path))
        return cls(str(path))

    def within(self, start: datetime | None = None, end: datetime | None = None,
               include: Sequence[str] = ()) -> SeriesFile:
        """These rows narrowed further: times in ``[start, end)``, only ``include``."""
        both = (lambda a, b, pick: b if a is None else a if b is None else pick(a, b))  # noqa: E731
        return dataclasses.replace(
            self, start=both(self.start, _utc(start), max), end=both(self.end, _utc(end), min),
            include=self.include + ((tuple(include),) if include else ()))

    def scan(self) -> pl.LazyFrame:
        lf = pl.scan_parquet(self.path)
        if self.start is not None:
            lf = lf.filter(pl.col(s.TS) >= self.start)
        if self.end is not None:
            lf = lf.filter(pl.col(s.TS) < self.end)
        for wanted in self.include:
            lf = lf.filter(pl.col(s.SERIES_ID).is_in(wanted) | pl.col(s.ENTITY).is_in(wanted))
        return lf

    def ids(self) -> list[str]:
        """The series ids with a row here, sorted."""
        return sorted(self.scan().select(pl.col(s.SERIES_ID).unique()).collect(engine="streaming")
                      .to_series().to_list())

    def newest(self) -> datetime | None:
        return self.scan().select(pl.col(s.TS).max()).collect(engine="streaming").item()

    def rows(self, ids: Sequence[str], columns: Sequence[str] = ()) -> pl.DataFrame:
        """The rows of the series ``ids``: the file is sorted by series id, so the range filter
        lets the reader skip every row group outside it."""
        ids = sorted(ids)
        lf = self.scan().filter(pl.col(s.SERIES_ID).is_between(pl.lit(ids[0]), pl.lit(ids[-1]))
                                & pl.col(s.SERIES_ID).is_in(ids))
        return (lf.select(columns) if columns else lf).collect()


def _utc(when: datetime | None) -> datetime | None:
    return when if when is None or when.tzinfo else when.replace(tzinfo=UTC)


#: series per read when a whole file is hashed: the rows of a few hundred series at a time
_FINGERPRINT_SERIES = 256


def select_training_data(series: pl.DataFrame | SeriesFile, config: TrainConfig
                         ) -> pl.DataFrame | SeriesFile:
    if isinstance(series, SeriesFile):
        series = series.within(end=config.until, include=config.include)
        if not series.ids():
            raise ValueError("no training data left after applying --until/--include")
        return series
    s.validate(series, s.SERIES_SCHEMA, what="training input")
    if config.until is not None:
        series = series.filter(pl.col(s.TS) < _utc(config.until))
    if config.include:
        wanted = set(config.include)
        series = series.filter(pl.col(s.SERIES_ID).is_in(wanted) | pl.col(s.ENTITY).is_in(wanted))
    if series.is_empty():
        raise ValueError("no training data left after applying --until/--include")
    return series


def fingerprint(series: pl.DataFrame | SeriesFile) -> str:
    """A stable hash of the training data, recorded in the manifest.

    A :class:`SeriesFile` is hashed a few hundred series at a time, in series order: the same
    bytes fed to the hash as the whole frame's (row hashes are per row), so the same digest.
    """
    digest = hashlib.sha256()
    if isinstance(series, SeriesFile):
        ids = series.ids()
        for lo in range(0, len(ids), _FINGERPRINT_SERIES):
            part = series.rows(ids[lo:lo + _FINGERPRINT_SERIES], (s.SERIES_ID, s.TS, s.VALUE))
            digest.update(part.sort(s.SERIES_ID, s.TS).hash_rows(seed=0).to_numpy().tobytes())
        return digest.hexdigest()
    # the three columns first, then sorted: the same rows in the same order, a third of the copy
    rows = series.select(s.SERIES_ID, s.TS, s.VALUE).sort(s.SERIES_ID, s.TS).hash_rows(seed=0)
    digest.update(rows.to_numpy().tobytes())
    return digest.hexdigest()


def _read_members(batch: Sequence[tuple[str, list[str]]], source: SeriesFile
                  ) -> list[tuple[str, list[tuple[str, pl.DataFrame]]]]:
    """In a worker: the rows of every series of a batch of entities' tasks, read at once."""
    rows = source.rows([sid for _, sids in batch for sid in sids],
                       (s.SERIES_ID, s.TS, s.VALUE))
    by_id = rows.partition_by(s.SERIES_ID, as_dict=True)
    return [(entity, [(sid, by_id[(sid,)].select(s.TS, s.VALUE).sort(s.TS)) for sid in sids])
            for entity, sids in batch]


def _fit_guarded(sid: str, frame: pl.DataFrame, config: TrainConfig) -> dict:
    """:func:`_fit_one` under the per-series time limit; a fit that raises or runs past it is
    served by the linear fallback, the reason recorded. Adds the wall and CPU seconds it took."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    try:
        with time_limit(config.series_time_limit_seconds):
            out = _fit_one(sid, frame, config)
    except SeriesTimeLimit:
        out = {"error": f"ran past the time limit of {config.series_time_limit_seconds:g} s"}
    if "error" in out:
        reason = f"fit failed: {out['error']}"
        out = _fit_one(sid, frame, config, fallback_reason=reason)
        if "error" in out:
            out["error"] = f"{reason}; the fallback too: {out['error']}"
    out["fit_seconds"] = round(time.perf_counter() - wall, 3)
    out["fit_cpu_seconds"] = round(_cpu_seconds() - cpu, 3)
    return out


def _fit_entity(entity: str, members: list[tuple[str, pl.DataFrame]],
                config: TrainConfig) -> dict:
    """Every series of one entity (:func:`_fit_guarded`), then the entity's anomaly detector on
    their residual z-scores, in one task: the residuals never leave the worker. ``members``:
    the entity's ``(sid, frame)`` pairs.
    """
    _warm_up()
    outcomes = [_fit_guarded(sid, frame, config) for sid, frame in members]
    seen = _seen(frame for _, frame in members)
    fitted = [o for o in outcomes if "error" not in o]
    detector = error = None
    if fitted:
        wide = fitted[0]["residual_z"]
        for o in fitted[1:]:
            wide = wide.join(o["residual_z"], on=s.TS, how="full", coalesce=True)
        metrics = [s.split_series_id(o["sid"])[1] for o in fitted]
        try:
            detector = WorkloadAnomalyDetector(**config.detector).fit(
                wide.select(o["sid"] for o in fitted).to_numpy(), metrics)
        except ValueError as exc:
            error = str(exc)
    for o in fitted:
        del o["residual_z"]
        # the crossing plots' shortlist, worked out here beside the model (not in the driver)
        o["crossing_margin"] = crossing_margin(o["sid"], o["model"])
        o.update(stored_form(o.pop("model")))
    return {"series": outcomes, "detector": detector, "detector_error": error, **seen}


def _seen(frames) -> dict:
    """What the manifest says of the data, from each task's own rows: the first and last
    times, and how often each step between consecutive times occurs (microseconds)."""
    steps: dict[int, int] = {}
    first = last = None
    for frame in frames:
        if frame.is_empty():
            continue
        ts = frame[s.TS]
        first = ts[0] if first is None else min(first, ts[0])
        last = ts[-1] if last is None else max(last, ts[-1])
        counts = ts.diff().drop_nulls().dt.total_microseconds().value_counts()
        for step, n in counts.iter_rows():
            steps[step] = steps.get(step, 0) + n
    return {"first": first, "last": last, "steps": steps}


def stored_form(model: SeriesForecaster) -> dict:
    """A fitted forecaster as the bundle stores it (its two files' text) and what the manifest
    says of it: serialised in the worker, so no Prophet object travels back or stays in memory."""
    return {"series_json": json.dumps(model.to_dict(with_prophet=False)),
            "prophet_json": model.prophet_json() if model.kind_ == "prophet" else None,
            "kind": model.kind_, "fallback_reason": model.fallback_reason_,
            "n_points": model.n_points_, "sigma": model.sigma_,
            "fit_step_minutes": model.fit_step_minutes_}


def _store(entity: str, out: dict, forecasters: StoredForecasters, detectors: StoredDetectors) -> dict:
    """Write one entity's fitted files as its task arrives; keep only what the manifest needs."""
    for o in out["series"]:
        if "error" not in o:
            forecasters.add(o["sid"], o.pop("series_json"), o.pop("prophet_json"))
    if out["detector"] is not None:
        detectors.add(entity, out["detector"])
        out["detector"] = True
    return out


@lru_cache(maxsize=1)
def _warm_up() -> None:
    """Import what a process's first fit would (Prophet, every holiday calendar: seconds on a busy
    machine) before any series' time limit starts: the limit is for the fit, not the imports."""
    import holidays.countries  # noqa: F401
    from prophet import Prophet

    Prophet()


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (cmdstan)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _fit_one(sid: str, frame: pl.DataFrame, config: TrainConfig,
             fallback_reason: str | None = None) -> dict:
    """Backtest a fresh model on the holdout, then fit the served model on all history.

    With a ``fallback_reason``, both are the linear fallback, which records that reason. The
    holdout's :class:`~training.threshold.TimingEvidence` per horizon goes back as
    ``timing_evidence`` (:func:`train_bundle` chooses each crossing-time quantile from it once
    the alarm levels are pooled).
    """
    def fit(part: pl.DataFrame, served: bool = True) -> SeriesForecaster:
        # each model remembers its last forecast: the replays and the residuals below ask for
        # the same times' forecast again (the holdout's, the whole history's)
        model = SeriesForecaster(**config.forecaster).remember_expected()
        # no in-sample error paths: the trial's are never read, the served model's are learned
        # below only when the holdout's cannot replace them; nor the trial's sigma (never read)
        return (model.fit(part, in_sample_errors=False, in_sample_sigma=served)
                if fallback_reason is None else model.fit_fallback(part, fallback_reason))

    try:
        holdout_start = frame[s.TS].max() - timedelta(hours=config.holdout_hours)
        trial = fit(frame.filter(pl.col(s.TS) < holdout_start), served=False)
        errors = rolling_origin_errors(
            trial, frame, holdout_start,
            horizon_minutes=config.horizon_minutes,
            every_minutes=config.origin_every_minutes,
            linear_window_minutes=config.predict_linear_window_minutes,
        )
        model = fit(frame)
        timing: dict[float, TimingEvidence] = {}
        errors["error_paths_from"] = use_holdout_errors(model, trial, frame, holdout_start,
                                                        config.alert_rule, timing)
        if errors["error_paths_from"] != "holdout" and fallback_reason is None:
            model.learn_in_sample_errors(frame)
        clean = frame.drop_nulls(s.VALUE)
        expected = model.expected(clean[s.TS].to_numpy())
        z = (clean[s.VALUE].to_numpy() - expected) / max(model.sigma_, 1e-9)
        model.remember_expected(False)
        return {"sid": sid, "model": model, "errors": errors, "timing_evidence": timing,
                "residual_z": pl.DataFrame({s.TS: clean[s.TS], sid: z})}
    except Exception as exc:  # one bad series never sinks the batch
        return {"sid": sid, "error": f"{type(exc).__name__}: {exc}"}


def use_holdout_errors(model: SeriesForecaster, trial: SeriesForecaster, frame: pl.DataFrame,
                       holdout_start, rule: AlertRule | None = None,
                       timing: dict | None = None) -> str:
    """Give the served model the errors the trial model made on the holdout (out of sample).

    In-sample residuals understate what a deployed model gets wrong; the holdout replay is what
    the scheduled job would have seen. Falls back to the in-sample paths with too short a holdout.
    ``timing`` (if given) receives the holdout's timing evidence (:func:`holdout_calibrations`).
    """
    if model.kind_ != "prophet" or trial.kind_ != "prophet":
        return "none (linear fallback)"
    warmup = timedelta(minutes=CORRECTION_WINDOW_MINUTES)
    part = frame.filter(pl.col(s.TS) >= holdout_start - warmup).sort(s.TS)
    ts = part[s.TS].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    expected = trial.expected(ts)
    resid = part[s.VALUE].fill_null(np.nan).to_numpy() - expected
    paths, origins = error_paths_with_origins(resid, model.step_minutes_,
                                              model.max_horizon_minutes, model.n_error_paths)
    if paths.shape[0] < MIN_ERROR_PATHS:
        return "in-sample (holdout too short)"
    model.error_paths_ = paths.astype(np.float32)
    model.error_path_minutes_ = hourly_phases(resid, ts, origins)  # the paths' phases
    model.calibrations_ = holdout_calibrations(model, trial, ts, part[s.VALUE].fill_null(np.nan)
                                               .to_numpy(), frame.filter(pl.col(s.TS) < holdout_start),
                                               rule or AlertRule(), expected=expected,
                                               timing=timing)
    return "holdout"


#: horizons (minutes) at which the probability calibration is fitted; serving uses the nearest
CALIBRATION_HORIZONS = (30, 60, 120, 240, 360)


def holdout_calibrations(model: SeriesForecaster, trial: SeriesForecaster, ts: np.ndarray,
                         y: np.ndarray, history: pl.DataFrame, rule: AlertRule,
                         expected: np.ndarray | None = None,
                         timing: dict[float, TimingEvidence] | None = None) -> dict:
    """Probability calibrations and alarm levels from the trial model's replay of the holdout.

    Each level is the replay's own choice, not smoothed here: :func:`train_bundle` smooths it
    once, toward its metric kind's pool in the run and the served (champion) model's level
    (``StoredForecasters.pool_alarm_levels``), and chooses the crossing-time quantile under the
    level that result serves, from the ``timing`` evidence this fills per horizon (the quantile
    stored here is the one for the replay's own level).

    The thresholds the operator will use are unknown here: pool quantiles of the training
    history in both directions (P90, P95, P99 above; P10, P5, P1 below). The replay checks
    every ``rule.every_minutes`` and the alarm level is chosen under the alert ``rule``.
    """
    values = history[s.VALUE].drop_nulls().to_numpy()
    targets = [(float(np.quantile(values, q)), "above") for q in (0.9, 0.95, 0.99)]
    targets += [(float(np.quantile(values, q)), "below") for q in (0.1, 0.05, 0.01)]
    expected = trial.expected(ts) if expected is None else expected  # at ``ts``
    every = max(1, int(round(rule.every_minutes / model.step_minutes_)))
    idx = np.arange(0, y.size, every)
    rule = dataclasses.replace(rule, every_minutes=every * model.step_minutes_)  # as replayed
    horizons = [h for h in CALIBRATION_HORIZONS if h <= model.max_horizon_minutes]
    paths = model.error_paths_.astype(np.float64)
    corrections = rolling_corrections(y - expected, model.step_minutes_)
    truths = holdout_truths(y, idx, model.step_minutes_, horizons, targets)
    extremes: dict = {}
    replays = holdout_outcomes(y, expected, idx, model.step_minutes_, horizons, paths, targets,
                               corrections, truths, extremes)
    bounds = s.value_range(history[s.METRIC][0]) if s.METRIC in history.columns and history.height \
        else UNBOUNDED
    calibrations = {}
    for h in horizons:
        calibration = calibrate_on_replay(replays[h], DEFAULT_ALARM, rule=rule,
                                          checks_per_outcome=h / (every * model.step_minutes_))
        if calibration.n_fitted:
            calibrations[h] = calibration
    evidence = holdout_timings(y, expected, corrections, idx, model.step_minutes_, paths, targets,
                               {h: replays[h] for h in calibrations}, calibrations, bounds, truths,
                               extremes, phases=None if model.error_path_minutes_ is None
                               else (ts, model.error_path_minutes_))
    if timing is not None:
        timing.update({float(h): e for h, e in evidence.items()})
    ups = [thr for thr, d in targets if d == "above"]
    downs = [thr for thr, d in targets if d == "below"]
    return {float(h): dataclasses.replace(calibration, above=(min(ups), max(ups)),
                                          below=(min(downs), max(downs)),
                                          timing=evidence[h].best(calibration.alarm))
            for h, calibration in calibrations.items()}


def holdout_timings(y: np.ndarray, expected: np.ndarray, corrections: tuple[np.ndarray, np.ndarray],
                    idx: np.ndarray, step: float, paths: np.ndarray,
                    targets: list[tuple[float, str]], outcomes: dict[float, list[ReplayOutcome]],
                    calibrations: dict[float, ProbabilityCalibration],
                    bounds: tuple[float, float], truths: list[np.ndarray] | None = None,
                    extremes: dict | None = None,
                    phases: tuple[np.ndarray, np.ndarray] | None = None) -> dict[float, TimingEvidence]:
    """The holdout's timing evidence at each horizon (:func:`~training.evaluation.replay.
    timing_evidence`): its :meth:`~training.threshold.TimingEvidence.best` under an alarm level
    is the crossing-time quantile the backtest chooses (:func:`~training.evaluation.replay.
    best_timing`) under that level.

    The paths' crossing times are worked out only at the checks it reads, those whose
    calibrated probability reached :data:`~training.threshold.TIMING_FLOOR` (the lowest level
    any smoothing serves) of a crossing that came within H, and once per
    check and target for every horizon: a shorter horizon's paths are a prefix of the longest
    one's, so a path crosses within H exactly when its first crossing over the longest comes
    before H (the same answers as :func:`replay_probabilities` at each horizon, tested).
    ``truths``: :func:`holdout_truths` over these checks, if the caller has them already;
    ``extremes``: what :func:`holdout_outcomes` filled in, if the caller has it: with no bounds
    (training's replay holds nothing in a range) only the paths whose running extreme reached
    the threshold (the same sums) are walked for their first crossing. ``phases`` (if given):
    the grid's timestamps and the paths' origin minutes of the hour, the crossing times then
    taken over the paths begun near each check's minute (as served).
    """
    level, slope = corrections
    n_hs = {h: max(1, int(round(h / step))) for h in outcomes}
    if truths is None:
        truths = holdout_truths(y, idx, step, list(outcomes), targets)
    warned, at = {}, {}
    for h, n_h in n_hs.items():
        at[h] = idx[idx + n_h < y.size]  # the checks ``outcomes[h]`` are aligned with
        calibration = calibrations[h]
        warned[h] = [o.live & o.crossed & (calibration.apply(np.nan_to_num(o.probability))
                                           >= TIMING_FLOOR) for o in outcomes[h]]
    timed = {h: [] for h in outcomes}
    for i, (threshold, direction) in enumerate(targets):
        mine = [h for h in outcomes if warned[h][i].any()]
        checks = np.unique(np.concatenate([at[h][warned[h][i]] for h in mine])) if mine else \
            np.zeros(0, dtype=np.int64)
        first = None
        if checks.size:
            n_max = max(n_hs[h] for h in mine)
            minutes = np.arange(1, n_max + 1) * step
            cols = np.clip(checks[:, None] + np.arange(1, n_max + 1)[None, :], 0, y.size - 1)
            point = clip_to_range(expected[cols] + damped(level[checks], slope[checks], minutes),
                                  bounds)
            maybe = None
            if extremes and bounds == UNBOUNDED:
                longest = max(mine, key=lambda h: n_hs[h])
                rows = np.searchsorted(extremes["rows"], checks)
                if direction == "above":
                    maybe = extremes["highs"][longest][rows] >= threshold
                else:
                    maybe = extremes["lows"][longest][rows] <= threshold
            first = first_crossings(point, paths[:, :n_max], threshold, direction, bounds, maybe)
        for h in outcomes:
            o, n_h, hit = outcomes[h][i], n_hs[h], warned[h][i]
            when = np.full((at[h].size, len(TIMING_LEVELS)), np.nan)
            truth = np.full(at[h].size, np.nan)
            if hit.any():
                rows = np.searchsorted(checks, at[h][hit])
                within = np.where(first[rows] < n_h, first[rows], -1)
                matched = None if phases is None else PathPhases(
                    minute_of_hour(phases[0][at[h][hit]]), phases[1]).matched()
                when[hit] = crossing_time_quantiles(np.arange(1, n_h + 1) * step, within,
                                                    TIMING_LEVELS, matched)
                truth[hit] = crossing_within(truths[i][:at[h].size][hit], n_h, step)
            timed[h].append(dataclasses.replace(o, when=when, true_minutes=truth))
    return {h: timing_evidence(timed[h], calibrations[h]) for h in outcomes}


def holdout_truths(y: np.ndarray, idx: np.ndarray, step: float, horizons: list[float],
                   targets: list[tuple[float, str]]) -> list[np.ndarray]:
    """Per target, :func:`~training.evaluation.replay.true_minutes` at the checks ``idx`` within
    the longest horizon: a shorter horizon's are the same where they fall within it
    (:func:`crossing_within`), as its look-ahead is a prefix of the longest one's."""
    n_max = max((max(1, int(round(h / step))) for h in horizons), default=1)
    return [true_minutes(y, idx, n_max, step, thr, direction == "above")
            for thr, direction in targets]


def crossing_within(minutes: np.ndarray, n_h: int, step: float) -> np.ndarray:
    """True crossing minutes of a longer look-ahead as ``n_h`` steps' would be: NaN beyond it."""
    return np.where(minutes <= n_h * step, minutes, np.nan)


def holdout_outcomes(y: np.ndarray, expected: np.ndarray, idx: np.ndarray, step: float,
                     horizons: list[float], paths: np.ndarray, targets: list[tuple[float, str]],
                     corrections: tuple[np.ndarray, np.ndarray] | None = None,
                     truths: list[np.ndarray] | None = None, extremes: dict | None = None
                     ) -> dict[float, list[ReplayOutcome]]:
    """:func:`~training.evaluation.replay.replay_outcomes` for several horizons in one pass.

    The same outcomes (tested equal), for the probabilities only: the share of paths whose
    running extreme reaches the threshold within each horizon, from one running maximum and
    minimum over the longest horizon (a shorter horizon's corrected forecast is a prefix of a
    longer one's), instead of every crossing time per horizon and threshold. ``corrections``:
    :func:`rolling_corrections` of the residuals, ``truths`` :func:`holdout_truths`, if the
    caller has them already. A check whose highest point forecast plus the highest error
    anywhere on the longest horizon stays below every "above" threshold reaches none (rounding
    is monotone): its running maxima are not worked out (-inf answers the same), nor the
    minima of one that cannot reach a "below" threshold. ``extremes`` (a dict, if given)
    receives the checks (``rows``) and each horizon's running maxima and minima per path
    (``highs``, ``lows``: (checks, paths)), for :func:`holdout_timings`.
    """
    if not horizons:
        return {}
    level, slope = rolling_corrections(y - expected, step) if corrections is None else corrections
    if truths is None:
        truths = holdout_truths(y, idx, step, horizons, targets)
    n_hs = {h: max(1, int(round(h / step))) for h in horizons}
    n_max = max(n_hs.values())
    rows = idx[idx + min(n_hs.values()) < y.size]
    minutes = np.arange(1, n_max + 1) * step
    cols = np.clip(rows[:, None] + np.arange(1, n_max + 1)[None, :], 0, y.size - 1)
    point = expected[cols] + damped(level[rows], slope[rows], minutes)
    highs = {h: np.full((rows.size, paths.shape[0]), -np.inf) for h in horizons}
    lows = {h: np.full((rows.size, paths.shape[0]), np.inf) for h in horizons}
    ups = [thr for thr, direction in targets if direction == "above"]
    downs = [thr for thr, direction in targets if direction == "below"]
    up = down = np.zeros(rows.size, dtype=bool)
    if paths.size and rows.size:  # NaN extremes (nothing finite) reach nothing, as their sums
        if ups:
            up = np.fmax.reduce(point, axis=1) + np.fmax.reduce(paths[:, :n_max], axis=None) >= min(ups)
        if downs:
            down = np.fmin.reduce(point, axis=1) + np.fmin.reduce(paths[:, :n_max], axis=None) <= max(downs)
    # both first, then one side only: a block mostly needs the same extremes
    todo = np.concatenate([np.flatnonzero(up & down), np.flatnonzero(up & ~down),
                           np.flatnonzero(down & ~up)])
    ends = sorted(set(n_hs.values()))
    starts = [0, *ends[:-1]]  # the extremes over each stretch between horizons, then accumulated
    chunk = max(1, CACHED_ELEMENTS // max(1, paths[:, :n_max].size))
    block = np.empty((min(chunk, todo.size), paths.shape[0], n_max))  # reused: no fresh pages
    for lo in range(0, todo.size, chunk):
        at = todo[lo:lo + chunk]
        future = np.add(point[at][:, None, :], paths[None, :, :n_max], out=block[:at.size])
        if up[at].any():
            top = np.fmax.accumulate(np.fmax.reduceat(future, starts, axis=2), axis=2)
            for h, n_h in n_hs.items():
                highs[h][at] = top[..., ends.index(n_h)]
        if down[at].any():
            bottom = np.fmin.accumulate(np.fmin.reduceat(future, starts, axis=2), axis=2)
            for h, n_h in n_hs.items():
                lows[h][at] = bottom[..., ends.index(n_h)]
    if extremes is not None:
        extremes.update(rows=rows, highs=highs, lows=lows)
    out = {}
    for h, n_h in n_hs.items():
        at = idx[idx + n_h < y.size]
        here = slice(0, at.size)  # ``rows`` starts with the same checks
        cur, fine = y[at], np.isfinite(expected[at])
        out[h] = []
        for (thr, direction), truth in zip(targets, truths, strict=True):
            above = direction == "above"
            beyond = np.isfinite(cur) & ((cur >= thr) if above else (cur <= thr))
            live = np.isfinite(cur) & ~beyond & fine
            p = np.full(at.size, np.nan)
            crossed = np.zeros(at.size, dtype=bool)
            if live.any():
                reach = (highs[h][here][live] >= thr) if above else (lows[h][here][live] <= thr)
                p[live] = reach.sum(axis=1) / paths.shape[0]
                crossed[live] = truth[:at.size][live] <= n_h * step  # (NaN: none within)
            out[h].append(ReplayOutcome(p, crossed, beyond))
    return out


def train_bundle(series: pl.DataFrame | SeriesFile, config: TrainConfig | None = None, *,
                 progress: Progress | None = None, verbose: bool = False,
                 workdir: str | Path | None = None,
                 previous: Mapping[str, dict[float, ProbabilityCalibration]] | None = None
                 ) -> TrainResult:
    """Fit and backtest every series, then each entity's anomaly detector; return the bundle.

    The series fan out over ``config.engine``; ``progress(done, total)`` is called here after each
    finished batch; ``verbose`` lets the libraries log (in the workers too). Each entity's models
    are written to ``workdir`` as its task finishes (a temporary folder removed with the bundle
    if None; ``workdir`` must outlive the bundle): the bundle's forecasters and detectors are
    read from there when asked for, so memory does not grow with the number of series.
    ``previous`` holds the served model's calibrations per series and horizon
    (:func:`training.retrain.served_calibrations`): each alarm level is smoothed, once, toward
    its series' one and its metric kind's pool in this run, and the crossing-time quantile
    chosen under the level served (``StoredForecasters.pool_alarm_levels``).
    """
    config = config or TrainConfig()
    spool = Path(tempfile.mkdtemp(prefix="prealert-train-") if workdir is None else workdir)
    spool.mkdir(parents=True, exist_ok=True)
    stored, stored_detectors = StoredForecasters(spool), StoredDetectors(spool)
    if workdir is None:  # the folder goes when the last forecaster read from it does
        weakref.finalize(stored, shutil.rmtree, str(spool), True)
    data = select_training_data(series, config)
    # an entity's series and its detector together; only what a fit reads travels to the
    # workers: from a SeriesFile, each batch's workers read the rows themselves
    if isinstance(data, SeriesFile):
        groups, read = {sid: sid for sid in data.ids()}, partial(_read_members, source=data)
    else:
        groups = {sid: (sid, g.select(s.TS, s.VALUE).sort(s.TS))
                  for (sid,), g in data.group_by(s.SERIES_ID)}
        read = None
    entities: dict[str, list[str]] = {}
    for sid in sorted(groups):
        entities.setdefault(s.split_series_id(sid)[0], []).append(sid)
    items = sorted(entities.items())
    previous = previous or {}
    # each task: its members (rows, or ids a worker reads)
    tasks = [(entity, [groups[sid] for sid in sids]) for entity, sids in items]
    done = fan_out(partial(_fit_entity, config=config), tasks, engine=config.engine,
                   n_jobs=config.n_jobs, batch_size=config.batch_size, verbose=verbose,
                   progress=progress, sizes=[len(sids) for _, sids in items],
                   consume=partial(_store, forecasters=stored, detectors=stored_detectors),
                   read=read)
    outcomes = [o for entity in done for o in entity["series"]]
    failed = {o["sid"]: o["error"] for o in outcomes if "error" in o}
    fitted = [o for o in outcomes if "error" not in o]
    if not fitted:
        raise RuntimeError(f"every series failed to train: {failed}")
    for sid, err in failed.items():
        log.warning("series %s got no model: %s", sid, err)
    backtest = pl.DataFrame([{"series_id": o["sid"], **o["errors"]} for o in fitted])
    ratio = backtest["mae_model"] / backtest["mae_predict_linear"]
    score = float(ratio.drop_nans().drop_nulls().median() or float("nan"))
    for (entity, _), out in zip(items, done, strict=True):
        if out["detector"] is None and out["detector_error"] is not None:
            log.warning("entity %s got no anomaly detector: %s", entity, out["detector_error"])

    # every alarm level shrunk toward its previous one and its metric kind's pool in this run,
    # each crossing-time quantile chosen under the level served
    timing = {o["sid"]: o.pop("timing_evidence") for o in fitted if o.get("timing_evidence")}
    alarm_pools = stored.pool_alarm_levels(previous, timing)
    manifest = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "step": _step_of([out["steps"] for out in done]),
        "training_window": {"start": min(o["first"] for o in done if o["first"]).isoformat(),
                            "end": max(o["last"] for o in done if o["last"]).isoformat()},
        "data_fingerprint": fingerprint(data),
        "config": config.as_params(),
        "series": {
            o["sid"]: {"kind": o["kind"], "fallback_reason": o["fallback_reason"],
                       "n_points": o["n_points"], "sigma": o["sigma"],
                       "fit_step_minutes": o["fit_step_minutes"],
                       "fit_seconds": o["fit_seconds"], "fit_cpu_seconds": o["fit_cpu_seconds"],
                       **o["errors"]}
            for o in fitted
        },
        "failed_series": failed,
        "fit_seconds_total": round(sum(o["fit_seconds"] for o in outcomes), 3),
        "alert_rule": config.alert_rule.to_dict(),
        "alarm_pools": alarm_pools,
        "calendar": calendar_setting(config.forecaster),
        "score_mae_ratio_vs_predict_linear": score,
    }
    bundle = ModelBundle(manifest, stored, stored_detectors)
    return TrainResult(bundle, backtest, failed, score,
                       {o["sid"]: o["crossing_margin"] for o in fitted})


def _step_of(counts: list[dict[int, int]]) -> str:
    """The most common step between consecutive times of a series (the smaller of a tie)."""
    total: dict[int, int] = {}
    for part in counts:
        for step, n in part.items():
            total[step] = total.get(step, 0) + n
    if not total:
        return "unknown"
    return str(timedelta(microseconds=min(total, key=lambda k: (-total[k], k))))


"""The one replay of deployment: the walk-forward alert backtest and the training holdout's MAE origins."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from features import schema as s
from training.bundle import ModelBundle
from training.evaluation.baselines import predict_linear_lines, static_warning
from training.evaluation.metrics import false_alarm_runs_per_row
from training.forecast.correction import WINDOW_MINUTES as CORRECTION_WINDOW
from training.forecast.correction import (
    damped,
    error_paths_with_origins,
    hourly_phases,
    minute_of_hour,
    rolling_corrections,
)
from training.forecast.forecaster import SeriesForecaster
from training.threshold import (
    PHASE_WINDOW_MINUTES,
    TIMING_FLOOR,
    TIMING_LEVELS,
    UNBOUNDED,
    AlertRule,
    PathPhases,
    ProbabilityCalibration,
    TimingEvidence,
    clip_to_range,
    crossing_distribution,
    first_crossing_index,
    metric_kind,
    pooled_alarm_levels,
    smoothed_alarm,
)

PREALERT = "prealert"
STATIC = "static_90pct"
#: predict_linear over 60 minutes behind prealert's own alert rule, for a like-for-like look
LINEAR_60_RULE = "predict_linear_60m_rule"
#: a threshold crossed fewer times than this in the replay does not choose its own alarm level
MIN_CROSSINGS_FOR_OWN_ALARM = 10


@dataclass
class ReplayConfig:
    """How the replay runs; every field is logged to MLflow."""

    horizons: tuple[int, ...] = (60, 120)  # minutes
    every_minutes: int = 5  # an evaluation time every this many minutes
    retrain_every_hours: float = 24 * 7  # the scheduled job's cadence
    fit_step_minutes: int = 5  # history is averaged to this step before fitting (speed)
    error_history_days: float = 7.0  # residual history that supplies the error paths
    linear_windows: tuple[int, ...] = (30, 60)  # predict_linear windows, minutes
    static_fraction: float = 0.9
    alarm_probability: float = 0.5  # prealert warns when P(cross within H) reaches this
    n_paths: int = 256
    out_of_sample_errors: bool = True  # error paths from the previous model's replayed segment
    calibrate: bool = True  # recalibrate probabilities on that replay (isotonic)
    tune_alarm: bool = True  # choose the alarm level and the rule's `for` on that replay
    #: shrink that choice toward the previous model's level by the replay's evidence
    smooth_alarm: bool = True
    #: and toward its metric kind's pooled level over the series retrained in the same round
    pool_alarm: bool = True
    #: prealert's alert rule (``for`` / ``keep_firing_for``); None warns on every check alone
    alert_rule: AlertRule | None = field(default_factory=AlertRule)
    forecaster: dict = field(default_factory=dict)
    #: the crossing time over the error paths begun within this many minutes of the check's
    #: minute of the hour (None: over every path); the probability is over every path
    phase_window_minutes: float | None = PHASE_WINDOW_MINUTES

    def as_params(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


@dataclass
class SeriesCase:
    """One series to replay: a regular grid (NaN = gap), its threshold and the evaluation start."""

    name: str
    ts: np.ndarray  # datetime64[us], UTC, regular
    values: np.ndarray
    threshold: float
    direction: str
    eval_start: np.datetime64
    bounds: tuple[float, float] = UNBOUNDED  # the metric's physical range

    @property
    def step_minutes(self) -> float:
        return float(np.median(np.diff(self.ts)).astype("timedelta64[s]").astype(float) / 60)


def _fit_frame(ts, y, step_minutes: int) -> pl.DataFrame:
    frame = pl.DataFrame({s.TS: ts, s.VALUE: y}).with_columns(
        pl.col(s.TS).dt.replace_time_zone("UTC"))
    return (frame.drop_nans(s.VALUE).group_by_dynamic(s.TS, every=f"{step_minutes}m")
            .agg(pl.col(s.VALUE).mean()))


def true_minutes(y: np.ndarray, idx: np.ndarray, n_h: int, step: float, threshold: float,
                 above: bool) -> np.ndarray:
    """Minutes from each evaluation index until ``y`` first reaches the threshold; NaN if not in H."""
    ahead = np.full((idx.size, n_h), np.nan)
    cols = idx[:, None] + np.arange(1, n_h + 1)[None, :]
    ok = cols < y.size
    ahead[ok] = y[cols[ok]]
    first = first_crossing_index(np.nan_to_num(ahead, nan=-np.inf if above else np.inf),
                                 threshold, above)
    return np.where(first >= 0, (first + 1) * step, np.nan)


def onset_samples(y: np.ndarray, threshold: float, above: bool, gap_steps: int) -> np.ndarray:
    """Samples that begin an episode (an onset) at a horizon of ``gap_steps`` samples.

    A sample at or beyond the threshold whose previous such sample is more than ``gap_steps``
    earlier (or that has none): the crossing an operator meets after a quiet period. Crossings
    closer together belong to the episode already under way (a series flapping at the line).
    """
    beyond = np.flatnonzero(np.isfinite(y) & ((y >= threshold) if above else (y <= threshold)))
    previous = np.concatenate([[-np.inf], beyond[:-1]])
    out = np.zeros(y.size, dtype=bool)
    out[beyond[beyond - previous > gap_steps]] = True
    return out


@dataclass(frozen=True)
class PathPhasing:
    """The replay's grid timestamps and its error paths' origin minutes: :meth:`at` gives the
    :class:`PathPhases` of the checks at grid indices ``idx``."""

    ts: np.ndarray  # datetime64[us], the replay's grid
    path_minutes: np.ndarray  # (K,) int16
    window: float

    def at(self, idx) -> PathPhases:
        return PathPhases(minute_of_hour(self.ts[idx]), self.path_minutes, self.window)


def replay_probabilities(y, expected, level, slope, idx, step: float, horizon: float,
                         paths: np.ndarray, threshold: float, direction: str,
                         bounds: tuple[float, float] = UNBOUNDED, timing: float = 0.5,
                         levels: tuple[float, ...] = (), phases: PathPhasing | None = None):
    """prealert's answers at indices ``idx`` as serving gives them, and the true minutes.

    ``expected`` is the model's forecast on the grid, ``level``/``slope`` the real-time
    correction at each index (from :func:`rolling_corrections`), ``paths`` the error paths,
    ``bounds`` the metric's physical range, ``timing`` the crossing-time quantile answered
    (:attr:`ProbabilityCalibration.timing`), ``levels`` more quantiles to return, ``phases``
    (if given) the checks' and paths' minutes of the hour: the crossing times are then taken
    over the paths begun near each check's minute (:class:`PathPhases`).
    """
    n_h = int(round(horizon / step))
    minutes = np.arange(1, n_h + 1) * step
    cols = np.clip(idx[:, None] + np.arange(1, n_h + 1)[None, :], 0, y.size - 1)
    point = clip_to_range(expected[cols] + damped(level[idx], slope[idx], minutes), bounds)
    batch = crossing_distribution(minutes, point, paths[:, :n_h], threshold, direction, bounds,
                                  timing, levels, None if phases is None else phases.at(idx))
    return batch, true_minutes(y, idx, n_h, step, threshold, direction == "above")


@dataclass
class ReplayOutcome:
    """One target's replay, check by check in time order."""

    probability: np.ndarray  # raw P(cross within H); NaN where not evaluated
    crossed: np.ndarray  # the crossing came within H
    beyond: np.ndarray  # already beyond the threshold (an alert rule counts it as holding)
    #: (checks, len(TIMING_LEVELS)) crossing-time quantiles, and the true minutes (NaN: none)
    when: np.ndarray | None = None
    true_minutes: np.ndarray | None = None

    @property
    def live(self) -> np.ndarray:
        return np.isfinite(self.probability)


def replay_outcomes(y, expected, idx, step: float, horizon: float, paths: np.ndarray,
                    targets: list[tuple[float, str]],
                    bounds: tuple[float, float] = UNBOUNDED,
                    phases: PathPhasing | None = None) -> list[ReplayOutcome]:
    """Raw probabilities and whether the crossing came, per (threshold, direction) target.

    A replay the model was not trained on, at the regular checks ``idx``; checks whose horizon
    runs past the data are left out, checks already beyond the threshold are not evaluated.
    """
    level, slope = rolling_corrections(y - expected, step)
    n_h = int(round(horizon / step))
    idx = idx[idx + n_h < y.size]
    out = []
    cur = y[idx]
    for thr, direction in targets:
        beyond = np.isfinite(cur) & ((cur >= thr) if direction == "above" else (cur <= thr))
        live = np.isfinite(cur) & ~beyond & np.isfinite(expected[idx])
        p = np.full(idx.size, np.nan)
        crossed = np.zeros(idx.size, dtype=bool)
        when = np.full((idx.size, len(TIMING_LEVELS)), np.nan)
        true = np.full(idx.size, np.nan)
        if live.any():
            batch, truth = replay_probabilities(y, expected, level, slope, idx[live], step,
                                                horizon, paths, thr, direction, bounds,
                                                levels=TIMING_LEVELS, phases=phases)
            p[live], crossed[live] = batch.probability, np.isfinite(truth)
            when[live], true[live] = batch.at_levels, truth
        out.append(ReplayOutcome(p, crossed, beyond, when, true))
    return out


def calibrate_on_replay(outcomes: list[ReplayOutcome], default_alarm: float,
                        alarm_on: ReplayOutcome | None = None, tune_alarm: bool = True,
                        rule: AlertRule | None = None, checks_per_outcome: float = 1.0,
                        previous: ProbabilityCalibration | None = None) -> ProbabilityCalibration:
    """Isotonic calibration on all replay outcomes, with the alarm level chosen on the replay.

    ``checks_per_outcome`` is the horizon over the spacing of the checks (see
    :meth:`ProbabilityCalibration.fit`). The alarm is chosen (:func:`best_alert`,
    under ``rule``) on ``alarm_on`` (one target's outcomes) or, without it, on all targets'
    outcomes together; with ``tune_alarm`` off it stays ``default_alarm``. The crossing-time
    quantile (:func:`best_timing`) is chosen on the same outcomes when they carry crossing
    times (:func:`replay_outcomes`), under the served level; else the median stands. The chosen
    alarm level is first shrunk toward the ``previous`` model's calibration at this horizon
    (:func:`smoothed_alarm`), so a retrain on a day of few crossings does not swing it.
    """
    p_raw = np.concatenate([o.probability[o.live] for o in outcomes])
    crossed = np.concatenate([o.crossed[o.live] for o in outcomes])
    calibration = ProbabilityCalibration.fit(p_raw, crossed, checks_per_outcome=checks_per_outcome)
    alarm, for_minutes, evidence = default_alarm, None, 0.0
    if tune_alarm:
        on = [alarm_on] if alarm_on is not None else outcomes
        alarm, for_minutes = best_alert(
            [dataclasses.replace(o, probability=calibration.apply(o.probability)) for o in on],
            default_alarm, rule)
        crossed = sum(int(o.crossed[o.live].sum()) for o in on)
        if crossed >= MIN_CROSSINGS_FOR_OWN_ALARM:  # best_alert chose a level of the replay's own
            evidence = crossed / max(checks_per_outcome, 1.0)
    calibration = dataclasses.replace(calibration, alarm=alarm, for_minutes=for_minutes,
                                      alarm_outcomes=round(evidence, 2))
    if tune_alarm:
        calibration = smoothed_alarm(calibration, previous)
    # chosen under the level it serves with
    timing = best_timing([alarm_on] if alarm_on is not None else outcomes, calibration)
    return dataclasses.replace(calibration, timing=timing)


def timing_evidence(outcomes: list[ReplayOutcome], calibration: ProbabilityCalibration,
                    floor: float = TIMING_FLOOR) -> TimingEvidence:
    """The replay's :class:`TimingEvidence` under ``calibration``: its crossed checks whose
    calibrated probability reached ``floor``, in the outcomes' order (those without crossing
    times are skipped)."""
    timed = [o for o in outcomes if o.when is not None]
    if not timed:
        return TimingEvidence.of(np.zeros(0), np.zeros((0, len(TIMING_LEVELS))), np.zeros(0))
    p = np.concatenate([np.where(o.live & o.crossed,
                                 calibration.apply(np.nan_to_num(o.probability)), -1.0)
                        for o in timed])
    return TimingEvidence.of(p, np.concatenate([o.when for o in timed]),
                             np.concatenate([o.true_minutes for o in timed]), floor)


def best_timing(outcomes: list[ReplayOutcome], calibration: ProbabilityCalibration,
                default: float = 0.5) -> float:
    """The crossing-time quantile closest to the truth on the replay's warned crossings.

    Least mean absolute error of minutes over the checks whose crossing came within H and whose
    calibrated probability reached the alarm level (the answers an operator acts on); the
    ``default`` with fewer than :data:`MIN_TIMED_CROSSINGS` such checks.
    """
    return timing_evidence(outcomes, calibration, calibration.alarm).best(calibration.alarm,
                                                                          default)


#: among alert settings whose F1 on the replay is within this share of the best, take the quietest
QUIET_WITHIN = 0.03


def best_alert(outcomes: list[ReplayOutcome], default: float, rule: AlertRule | None = None,
               min_positives: int = 10) -> tuple[float, float | None]:
    """The alarm level, and the rule's ``for``, an operator tuning the alert on the past replay picks.

    F1 of "crosses within H" over the evaluated checks, each of ``rule.choices()`` applied
    along each outcome's time order. Of the settings within :data:`QUIET_WITHIN` of the best
    F1, the one with the fewest false alarms (runs of alerts none of whose checks saw a
    crossing), then the highest level, then the shortest ``for``: the same skill with fewer
    pages. ``(default, None)`` when the replay holds too few crossings to choose from.
    """
    crossed = [o.crossed[o.live] for o in outcomes]
    n_crossed = sum(int(c.sum()) for c in crossed)
    if n_crossed < min_positives:
        return default, None
    levels = np.round(np.arange(0.1, 0.95, 0.05), 2)
    rules = rule.choices() if rule is not None else [None]
    tp, n_warn, false_alarms = (np.zeros((len(rules), levels.size), dtype=np.int64) for _ in range(3))
    for o, c in zip(outcomes, crossed, strict=True):
        # every level at once: one row of flags per level
        on = (np.nan_to_num(o.probability, nan=-1.0)[None, :] >= levels[:, None]) | o.beyond[None, :]
        for i, r in enumerate(rules):
            warn = (r.firing(on) if r is not None else on)[:, o.live]
            tp[i] += (warn & c[None, :]).sum(axis=1)
            n_warn[i] += warn.sum(axis=1)
            false_alarms[i] += false_alarm_runs_per_row(warn, c)
    found = []  # (f1, false alarms, level, for)
    for i, r in enumerate(rules):
        for j, level in enumerate(levels):
            f1 = 2 * int(tp[i, j]) / (int(n_warn[i, j]) + n_crossed) if tp[i, j] else 0.0
            found.append((f1, int(false_alarms[i, j]), float(level),
                          None if r is None else r.for_minutes))
    best = max(f[0] for f in found)
    if best <= 0:
        return default, None
    near = [f for f in found if f[0] >= (1 - QUIET_WITHIN) * best]
    _, _, level, for_minutes = min(near, key=lambda f: (f[1], -f[2], f[3] or 0.0))
    return level, for_minutes

def _alerting(rule: AlertRule | None, checked, on_live: np.ndarray) -> np.ndarray:
    """The alert rule along a segment's checks (beyond the threshold holds) at the reported ones.

    ``checked`` is ``(beyond, live, keep)``: masks over the checks, and over the live ones.
    """
    beyond, live, keep = checked
    on = beyond.copy()
    on[live] = on_live
    return (rule.firing(on) if rule is not None else on)[live][keep]


def served_bundle(case_name: str, model: SeriesForecaster, rule: AlertRule | None,
                  folder: Path) -> ModelBundle:
    """``model`` as a service would load it: written as a bundle into ``folder`` and read back."""
    manifest = {"data_fingerprint": "replay", "alert_rule": rule.to_dict() if rule else None}
    ModelBundle(manifest, {case_name: model}, {}).save(folder)
    return ModelBundle.load(folder, prophet="eager")  # callers remove the folder, then save again


def replay_series(case: SeriesCase, config: ReplayConfig,
                  served: dict | None = None) -> pl.DataFrame:
    """Walk forward through ``case`` and return one row per (time, horizon, predictor).

    At each retrain the model is fitted on the data before it; its error paths and its
    probability calibration come from the previous model's replay of the segment just
    ended (out of sample), as the scheduled job would have them. prealert's answers come
    from the model after a bundle save and load, so they are what a service would answer;
    ``served`` (if given) receives that bundle per ``(retrain time, horizon)``. Replayed
    alone, a series' metric kind pools only its own levels (:func:`run_evaluation` pools a
    kind's series retrained in the same round).
    """
    return _drive({case.name: replay_steps(case, config, served)}, {}, {})[case.name]


def _drive(steps: dict, frames: dict, failed: dict, seconds: dict | None = None) -> dict:
    """Run :func:`replay_steps` generators side by side, round by round: at each retrain each
    alarm level is shrunk toward its metric kind's pool over the series that chose one in the
    same round and at the same horizon. A generator that raises goes to ``failed`` (its name:
    the exception), one that finishes to ``frames``; returns ``frames``."""
    seconds = {} if seconds is None else seconds
    pending: dict[str, tuple] = {}

    def advance(name, value) -> None:
        t = time.perf_counter()
        try:
            pending[name] = steps[name].send(value)
        except StopIteration as done:
            frames[name] = done.value
        except Exception as exc:  # one bad series never sinks the batch
            failed[name] = exc
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t

    for name in list(steps):
        advance(name, None)
    while pending:
        asked, pending = pending, {}
        pools = pooled_alarm_levels(((metric_kind(name), r), h, own)
                                    for name, (r, h, own) in asked.items() if own is not None)
        for name, (r, h, _) in asked.items():
            advance(name, pools.get(((metric_kind(name), r), float(h))))
    return frames


def replay_steps(case: SeriesCase, config: ReplayConfig, served: dict | None = None):
    """:func:`replay_series` as a generator: at each retrain round and horizon it yields
    ``(round, horizon, the replay's own calibration or None)`` and takes back the metric kind's
    :class:`PooledAlarm` for that round (or None); it returns the frame."""
    above = case.direction == "above"
    step = case.step_minutes
    y = case.values
    every = max(1, int(round(config.every_minutes / step)))
    cadence = np.timedelta64(int(config.retrain_every_hours * 3600e6), "us")
    max_h = max(config.horizons)
    rule = config.alert_rule
    if rule is not None:  # checked at the backtest's evaluation times
        rule = dataclasses.replace(rule, every_minutes=every * step)
    lead_in = np.timedelta64(int(max_h * 60e6), "us")
    rows = []
    t0 = case.eval_start
    last_index = y.size - 1
    prev = None  # the previous segment: its model's expectation and its indices
    served_before: dict[int, ProbabilityCalibration] = {}  # the previous model's, per horizon
    round_ = -1
    while t0 < case.ts[-1]:
        round_ += 1
        t1 = t0 + cadence
        fit_idx = case.ts < t0
        model = SeriesForecaster(**config.forecaster).fit(
            _fit_frame(case.ts[fit_idx], y[fit_idx], config.fit_step_minutes))
        with tempfile.TemporaryDirectory(prefix="prealert-replay-") as tmp:
            model = served_bundle(case.name, model, rule, Path(tmp)).forecasters[case.name]
        # expectation over the error history, the segment, and a horizon past its end
        hist_start = t0 - np.timedelta64(int(config.error_history_days * 86400e6), "us")
        span_idx = np.flatnonzero((case.ts >= hist_start) & (case.ts < t1 + lead_in))
        expected = np.full(y.shape, np.nan)
        expected[span_idx] = model.expected(case.ts[span_idx])
        resid = y - expected
        if prev is None and config.out_of_sample_errors:
            # before the first retrain, replay a trial model on the week before, as training does
            prev = _trial_replay(case, config, t0, hist_start, every, lead_in)
        if prev is not None and config.out_of_sample_errors:
            err_resid = (y - prev["expected"])[prev["span"]]
            err_ts = case.ts[prev["span"]]
        else:  # a history too short for a trial: only in-sample residuals exist
            err_resid = np.where(fit_idx, resid, np.nan)[span_idx]
            err_ts = case.ts[span_idx]
            # and the calibration replays the model on its own recent history (in sample)
            prev = {"expected": np.where(fit_idx, expected, np.nan),
                    "idx": np.flatnonzero((case.ts >= hist_start) & (case.ts < t0 - lead_in))[::every]}
        level, slope = rolling_corrections(resid, step)
        lin = {w: predict_linear_lines(y, step, w) for w in config.linear_windows}
        # the checks of this segment, plus the earlier ones the alert rule looks back at
        back = np.timedelta64(int(rule.max_lookback_checks * rule.every_minutes * 60e6), "us") \
            if rule is not None else np.timedelta64(0, "us")
        checks = np.flatnonzero((case.ts >= t0 - back) & (case.ts < t1))
        checks = checks[(checks % every == 0) & (checks + 1 <= last_index)]
        current = y[checks]
        beyond = np.isfinite(current) & (current >= case.threshold if above
                                         else current <= case.threshold)
        live = np.isfinite(current) & ~beyond
        keep = (case.ts[checks] >= t0)[live]  # live checks reported (the look-back ones are not)
        seg, current = checks[live], current[live]
        history = y[fit_idx]
        checked = (beyond, live, keep)

        for h in config.horizons if keep.any() else ():
            n_h = int(round(h / step))
            minutes = np.arange(1, n_h + 1) * step
            # float32, as a bundle stores them
            paths, origins = error_paths_with_origins(err_resid, step, h, config.n_paths)
            paths, path_minutes = paths.astype(np.float32), hourly_phases(err_resid, err_ts, origins)
            if paths.shape[0] < 10:
                raise ValueError(f"{case.name}: too little history for error paths")
            if config.phase_window_minutes is None:  # served as a bundle without phases is
                path_minutes = None
            phasing = None if path_minutes is None else PathPhasing(
                case.ts, path_minutes, config.phase_window_minutes)
            calibration, alarm = ProbabilityCalibration(), config.alarm_probability
            if config.calibrate:
                q = [np.nanquantile(history, 0.95 if above else 0.05),
                     np.nanquantile(history, 0.995 if above else 0.005)]
                outcomes = replay_outcomes(y, prev["expected"], prev["idx"], step, h, paths,
                                           [(thr, case.direction) for thr in (case.threshold, *q)],
                                           case.bounds, phasing)
                # calibrated on all the replayed thresholds, as training does; the operator's
                # own threshold picks the alarm level if the replay saw it crossed often enough
                own = outcomes[0] if outcomes[0].crossed.sum() >= MIN_CROSSINGS_FOR_OWN_ALARM \
                    else None
                calibration = calibrate_on_replay(
                    outcomes, config.alarm_probability, own, config.tune_alarm, rule,
                    h / (every * step))
            smooth = config.calibrate and config.tune_alarm
            pooled = yield round_, h, calibration if smooth and config.pool_alarm else None
            if smooth and (config.smooth_alarm or config.pool_alarm):
                calibration = smoothed_alarm(
                    calibration, served_before.get(h) if config.smooth_alarm else None,
                    pooled=pooled if config.pool_alarm else None)
                # the crossing-time quantile chosen under the level served, as training does
                calibration = dataclasses.replace(calibration, timing=best_timing(
                    [own] if own is not None else outcomes, calibration))
            # the paths and the calibration as the service reads them back from a bundle
            model.error_paths_, model.calibrations_ = paths, {float(h): calibration}
            model.error_path_minutes_ = path_minutes
            with tempfile.TemporaryDirectory(prefix="prealert-replay-") as tmp:
                bundle = served_bundle(case.name, model, rule, Path(tmp))
            if served is not None:
                served[(t0, h)] = bundle
            loaded = bundle.forecasters[case.name]
            paths, calibration = loaded.error_paths_.astype(np.float64), loaded.calibration_for(h)
            phasing = None if loaded.error_path_minutes_ is None else PathPhasing(
                case.ts, loaded.error_path_minutes_, config.phase_window_minutes)
            served_before[h] = calibration
            alarm = calibration.alarm if config.calibrate else config.alarm_probability
            b, truth = replay_probabilities(y, expected, level, slope, seg, step, h, paths,
                                            case.threshold, case.direction, case.bounds,
                                            calibration.timing, phases=phasing)
            probability = calibration.apply(b.probability)
            # the crossing within H when it is an onset (see onset_samples), else NaN
            crossing_idx = seg + np.round(np.nan_to_num(truth) / step).astype(np.int64)
            onset = np.isfinite(truth) & onset_samples(y, case.threshold, above, n_h)[crossing_idx]
            base = {"series": case.name, "ts": case.ts[seg][keep], "horizon": h,
                    "true_minutes": truth[keep], "onset_minutes": np.where(onset, truth, np.nan)[keep],
                    "current": current[keep]}
            used = bundle.alert_rule.with_for(calibration.for_minutes) if rule is not None else None
            rows.append(pl.DataFrame({
                **base, "predictor": PREALERT,
                "warn": _alerting(used, checked, probability >= alarm),
                "alarm_probability": alarm,
                "alert_for_minutes": used.for_minutes if used is not None else 0.0,
                "minutes": b.minutes[keep], "earliest": b.earliest_minutes[keep],
                "latest": b.latest_minutes[keep], "probability": probability[keep],
                "probability_raw": b.probability[keep], "model_kind": model.kind_,
                "crossing_quantile": calibration.timing,
                "retrained_at": np.full(int(keep.sum()), t0, dtype="datetime64[us]"),
                "alarm_chosen": calibration.alarm if calibration.alarm_chosen is None
                else calibration.alarm_chosen,
                # the crossings it was chosen on, and its kind's pooled level it shrank toward
                "alarm_outcomes": calibration.alarm_outcomes,
                "alarm_pooled": np.nan if calibration.alarm_pooled is None
                else calibration.alarm_pooled}))
            for w, (lv, sl) in lin.items():
                path = lv[seg, None] + sl[seg, None] * minutes[None, :]
                first = first_crossing_index(path, case.threshold, above)
                m = np.where(first >= 0, minutes[np.maximum(first, 0)], np.nan)[keep]
                rows.append(pl.DataFrame({**base, "predictor": f"predict_linear_{w}m",
                                          "warn": (first >= 0)[keep], "minutes": m}))
                if w == 60 and rule is not None:
                    rows.append(pl.DataFrame({**base, "predictor": LINEAR_60_RULE,
                                              "warn": _alerting(rule, checked, first >= 0), "minutes": m}))
            static = static_warning(current[keep], case.threshold, case.direction,
                                    config.static_fraction)
            rows.append(pl.DataFrame({**base, "predictor": STATIC, "warn": static}))
        prev = {"expected": expected,
                "span": (case.ts >= t0 - lead_in) & (case.ts < t1),
                "idx": np.flatnonzero((case.ts >= t0) & (case.ts < t1 - lead_in))[::every]}
        t0 = t1
    return pl.concat(rows, how="diagonal_relaxed") if rows else pl.DataFrame()

#: the least history (days) a trial model is fitted on before the first retrain's holdout
MIN_TRIAL_DAYS = 2.0


def _trial_replay(case: SeriesCase, config: ReplayConfig, t0, hold_start, every: int,
                  lead_in) -> dict | None:
    """The first retrain's out-of-sample replay: a trial model fitted before ``hold_start``
    and replayed on ``[hold_start, t0)``, as training's holdout gives the served model its
    error paths and calibration (:func:`training.train.use_holdout_errors`). Replaying the
    model on its own training history instead makes its errors look small and its
    probabilities overconfident. None when the history before the holdout is too short.
    """
    trial_idx = case.ts < hold_start
    if not trial_idx.any() or (hold_start - case.ts[0]) < np.timedelta64(
            int(MIN_TRIAL_DAYS * 86400e6), "us"):
        return None
    trial = SeriesForecaster(**config.forecaster).fit(
        _fit_frame(case.ts[trial_idx], case.values[trial_idx], config.fit_step_minutes))
    warmup = np.timedelta64(int(CORRECTION_WINDOW * 60e6), "us")
    span = (case.ts >= hold_start - warmup) & (case.ts < t0)
    expected = np.full(case.values.shape, np.nan)
    expected[span] = trial.expected(case.ts[span])
    idx = np.flatnonzero((case.ts >= hold_start) & (case.ts < t0 - lead_in))[::every]
    return {"expected": expected, "span": span, "idx": idx}


def run_evaluation(cases: list[SeriesCase], config: ReplayConfig, echo=print,
                   skipped: dict[str, str] | None = None) -> pl.DataFrame:
    """Replay every case; a failing series is reported and skipped, never sinks the run.

    The cases are replayed side by side, retrain round by retrain round, as one scheduled job
    retrains them all: each alarm level is also shrunk toward its metric kind's pooled level
    over the series retrained in the same round (:attr:`ReplayConfig.pool_alarm`).
    ``skipped`` (if given) receives each series that got no scored check, with the reason.
    """
    skipped = {} if skipped is None else skipped
    steps, reasons = {}, {}
    for case in cases:
        reason = _unscorable(case)
        if reason is None:
            steps[case.name] = replay_steps(case, config)
        else:
            reasons[case.name] = reason
    done, failed, seconds = {}, {}, {}
    _drive(steps, done, failed, seconds)
    frames = []
    for case in cases:
        frame = done.get(case.name)
        if case.name in failed:
            exc = failed[case.name]
            reasons[case.name] = f"failed: {type(exc).__name__}: {exc}"
        elif frame is not None:
            echo(f"  {case.name}: threshold {case.threshold:.4g} ({case.direction}), "
                 f"{seconds[case.name]:.1f} s")
            if frame.height:
                frames.append(frame)
                continue
            reasons[case.name] = (f"at or beyond the threshold {case.threshold:.4g} at every "
                                  "check: nothing left to predict")
        skipped[case.name] = reasons[case.name]
        echo(f"  {case.name}: not scored ({reasons[case.name]})")
    if not frames:
        raise RuntimeError("no series could be scored: " + "; ".join(
            f"{k}: {v}" for k, v in skipped.items()))
    return pl.concat(frames, how="diagonal_relaxed")


def _unscorable(case: SeriesCase) -> str | None:
    """Why a series cannot be replayed at all, or None."""
    history = case.values[case.ts < case.eval_start]
    if not np.isfinite(case.threshold):
        return f"threshold {case.threshold}"
    if np.nanstd(history) == 0:
        return "constant before evaluation: nothing to learn"
    return None


def rolling_origin_errors(
    model: SeriesForecaster,
    frame: pl.DataFrame,
    start,
    horizon_minutes: int = 60,
    every_minutes: int = 60,
    linear_window_minutes: int = 60,
) -> dict[str, float]:
    """Replay deployment after ``start``: every ``every_minutes`` forecast the next horizon.

    ``frame`` is one regular series (null values are gaps). At each origin the model sees only
    observations up to it, through the real-time correction serving applies; ``predict_linear``
    fits its window ending at the origin. Returns each predictor's mean absolute error over
    all (origin, minute) pairs with an observation, and the number of origins.
    """
    frame = frame.sort(s.TS)
    ts = frame[s.TS].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    y = frame[s.VALUE].fill_null(np.nan).to_numpy().astype(np.float64)
    step = float(np.median(np.diff(ts)).astype("timedelta64[s]").astype(float) / 60)
    n_h = max(1, int(round(horizon_minutes / step)))
    minutes = np.arange(1, n_h + 1) * step
    first = int(np.searchsorted(ts, np.datetime64(start.replace(tzinfo=None), "us")))
    every = max(1, int(round(every_minutes / step)))
    origins = np.arange(first, y.size - n_h, every)
    lookback = max(first - int(np.ceil(max(linear_window_minutes, CORRECTION_WINDOW) / step)), 0)
    expected = np.full(y.shape, np.nan)
    expected[lookback:] = model.expected(ts[lookback:])
    level, slope = rolling_corrections(y - expected, step)
    lin_level, lin_slope = predict_linear_lines(y, step, linear_window_minutes)
    seen = np.maximum.accumulate(np.where(np.isfinite(y), np.arange(y.size), -1))
    origins = origins[(seen[origins] >= 0) & np.isfinite(level[origins])]
    ahead = y[origins[:, None] + np.arange(1, n_h + 1)[None, :]]
    origins = origins[np.isfinite(ahead).any(axis=1)]
    ahead = y[origins[:, None] + np.arange(1, n_h + 1)[None, :]]
    preds = {
        "model": expected[origins[:, None] + np.arange(1, n_h + 1)[None, :]]
        + damped(level[origins], slope[origins], minutes),
        "predict_linear": lin_level[origins, None] + lin_slope[origins, None] * minutes[None, :],
        "last_value": np.repeat(y[seen[origins]][:, None], n_h, axis=1),
    }
    with np.errstate(invalid="ignore"):
        out = {f"mae_{k}": float(np.nanmean(np.abs(v - ahead))) if origins.size else float("nan")
               for k, v in preds.items()}
    out["n_origins"] = int(origins.size)
    return out


# --- the promotion gate: replay a GIVEN model over a recent window, no refit ----------------

def replay_given(case: SeriesCase, model: SeriesForecaster, rule: AlertRule | None,
                 config: ReplayConfig) -> pl.DataFrame:
    """:func:`given_columns` as one long frame (a row per check, predictor and horizon)."""
    frames = [pl.DataFrame(columns) for _, _, columns in given_columns(case, model, rule, config)]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def given_columns(case: SeriesCase, model: SeriesForecaster, rule: AlertRule | None,
                  config: ReplayConfig, predictors: tuple[str, ...] | None = None
                  ) -> list[tuple[str, int, dict]]:
    """Replay an already trained ``model`` over ``case`` from ``case.eval_start``, as served.

    Per predictor and horizon, ``(predictor, horizon, columns)``: the columns of
    :func:`replay_series`'s long frame (arrays, and the constant ones as scalars) for prealert
    and the same baselines (only ``predictors`` if given: the others are not computed), with no refit:
    the model's own error paths, calibration (``calibration_for(h)``, its alarm and ``for``)
    and the alert ``rule`` it was tuned under answer every check. Data before
    ``eval_start`` only warms up the real-time correction, ``predict_linear`` and the rule's
    look-back. Checks whose horizon runs past the data are not reported (no truth yet).
    A linear fallback (no error paths) answers from its Gaussian band, as serving does.
    """
    from training.predict import (  # local: keeps this section's imports with it
        answers_from_paths,
        served_calibration,
    )

    step = case.step_minutes
    if abs(step - model.step_minutes_) > 1e-6:
        raise ValueError(f"{case.name}: the replay grid is {step:g} min but the model was "
                         f"fitted at {model.step_minutes_:g} min")
    y, above = case.values, case.direction == "above"
    every = max(1, int(round(config.every_minutes / step)))
    if rule is not None:
        rule = dataclasses.replace(rule, every_minutes=every * step)
    back = rule.max_lookback_checks * every if rule is not None else 0
    first = int(np.searchsorted(case.ts, case.eval_start))
    checks = np.arange(max(first - back, 0), y.size - 1)
    checks = checks[checks % every == 0]
    expected = model.expected(case.ts)
    level, slope = rolling_corrections(y - expected, step)
    current = y[checks]
    beyond = np.isfinite(current) & (current >= case.threshold if above else current <= case.threshold)
    live = np.isfinite(current) & ~beyond
    seg, current = checks[live], current[live]
    out = []
    for h in config.horizons:
        n_h = int(round(h / step))
        keep = (seg >= first) & (seg + n_h < y.size)
        if not keep.any():
            continue
        use_paths = answers_from_paths(model, n_h)
        if model.kind_ == "prophet" and not use_paths:
            raise ValueError(f"{case.name}: the model learned no errors for a {h} min horizon")
        calibration = served_calibration(model, h, use_paths)
        if not calibration.covers(case.threshold, case.direction):
            # NOT as serving any more: serving extrapolates the calibration (issue 14); the gate
            # still scores the raw probability beyond the calibrated thresholds
            calibration = ProbabilityCalibration()
        answers, truth = _given_answers(model, use_paths, y, expected, level, slope, seg, step, h,
                                        case, calibration.timing)
        probability = calibration.apply(answers["probability_raw"])
        used = rule.with_for(calibration.for_minutes) if rule is not None else None
        warn = _alerting(used, (beyond, live, keep), probability >= calibration.alarm)
        # the crossing within H when it is an onset, as replay_series marks it (the gate counts them)
        crossing_idx = seg + np.round(np.nan_to_num(truth) / step).astype(np.int64)
        onset = np.isfinite(truth) & onset_samples(y, case.threshold, above, n_h)[crossing_idx]
        base = {"series": case.name, "ts": case.ts[seg][keep], "horizon": h,
                "true_minutes": truth[keep], "onset_minutes": np.where(onset, truth, np.nan)[keep],
                "current": current[keep]}
        if predictors is None or PREALERT in predictors:
            out.append((PREALERT, h, {
                **base, "predictor": PREALERT, "warn": warn, "alarm_probability": calibration.alarm,
                "alert_for_minutes": used.for_minutes if used is not None else 0.0,
                **{k: v[keep] for k, v in answers.items()},
                "probability": probability[keep], "model_kind": model.kind_}))
        if predictors is None or set(predictors) - {PREALERT}:
            out += [(name, h, {**base, "predictor": name, **cols})
                    for name, cols in _baseline_answers(case, config, rule, seg, keep, n_h,
                                                        (beyond, live, keep)).items()
                    if predictors is None or name in predictors]
    return out


def _given_answers(model: SeriesForecaster, use_paths: bool, y, expected, level, slope,
                   seg: np.ndarray, step: float, horizon: float, case: SeriesCase,
                   timing: float = 0.5):
    """Raw probability and crossing-time (``timing`` quantile, P10, P90) minutes at the checks
    ``seg``, and the true minutes."""
    if use_paths:
        minutes = model.error_path_minutes_  # as served: timed at the check's minute of the hour
        b, truth = replay_probabilities(y, expected, level, slope, seg, step, horizon,
                                        model.error_paths_.astype(np.float64), case.threshold,
                                        case.direction, case.bounds, timing,
                                        phases=None if minutes is None
                                        else PathPhasing(case.ts, minutes, PHASE_WINDOW_MINUTES))
        return {"probability_raw": b.probability, "minutes": b.minutes,
                "earliest": b.earliest_minutes, "latest": b.latest_minutes}, truth
    from training.threshold import Z90, minutes_to_threshold

    n_h = int(round(horizon / step))
    minutes = np.arange(1, n_h + 1) * step
    cols = np.clip(seg[:, None] + np.arange(1, n_h + 1)[None, :], 0, y.size - 1)
    points = expected[cols] + damped(level[seg], slope[seg], minutes)
    half = Z90 * model.sigma_
    grid = np.datetime64("2000-01-01", "us") + (minutes * 60e6).astype("timedelta64[us]")
    clip = lambda v: clip_to_range(v, case.bounds)  # noqa: E731  as serving holds the band
    found = [minutes_to_threshold(grid, clip(p), clip(p - half), clip(p + half), case.threshold,
                                  case.direction, np.datetime64("2000-01-01", "us"))
             for p in points]
    nan = lambda v: np.nan if v is None else v  # noqa: E731
    answers = {"probability_raw": np.array([c.probability for c in found], dtype=np.float64)}
    for key, attr in (("minutes", "minutes"), ("earliest", "earliest_minutes"),
                      ("latest", "latest_minutes")):
        answers[key] = np.array([nan(getattr(c, attr)) for c in found], dtype=np.float64)
    return answers, true_minutes(y, seg, n_h, step, case.threshold, case.direction == "above")


def _baseline_answers(case: SeriesCase, config: ReplayConfig, rule: AlertRule | None,
                      seg: np.ndarray, keep: np.ndarray, n_h: int, checked) -> dict[str, dict]:
    """The baselines at the reported checks: ``predict_linear`` per window (and the 60-minute
    line behind ``rule``), and the static warning; ``{predictor: {"warn", "minutes"}}``."""
    step, above = case.step_minutes, case.direction == "above"
    minutes = np.arange(1, n_h + 1) * step
    out = {}
    for w in config.linear_windows:
        lv, sl = predict_linear_lines(case.values, step, w)
        first = first_crossing_index(lv[seg, None] + sl[seg, None] * minutes[None, :],
                                     case.threshold, above)
        m = np.where(first >= 0, minutes[np.maximum(first, 0)], np.nan)[keep]
        out[f"predict_linear_{w}m"] = {"warn": (first >= 0)[keep], "minutes": m}
        if w == 60 and rule is not None:
            out[LINEAR_60_RULE] = {"warn": _alerting(rule, checked, first >= 0), "minutes": m}
    out[STATIC] = {"warn": static_warning(case.values[seg][keep], case.threshold, case.direction,
                                          config.static_fraction)}
    return out

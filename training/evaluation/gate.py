"""The promotion gate: candidate vs champion vs predict_linear on the alert replay of one recent window."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import partial

import numpy as np
import polars as pl

from features import schema as s
from training.bundle import ModelBundle
from training.evaluation.metrics import Tally, merged, score, tally_columns
from training.evaluation.replay import PREALERT, ReplayConfig, SeriesCase, given_columns
from training.evaluation.sources import cases_from_series
from training.fanout import fan_out
from training.train import SeriesFile

#: the replay warms up its corrections, predict_linear and the alert rule's look-back on this
WARMUP = timedelta(hours=3)


@dataclass
class GateConfig:
    """What the gate replays and how much worse than the champion a candidate may be.

    Defaults: the last 24 h, horizons 60 and 120 min, a check every 5 min; per horizon the
    candidate's F1 may be at most 0.02 below the champion's, its false alarms per day at most
    0.25 above, its MAE of minutes (on warned crossings, compared once both have 10) at most
    10 % above; and its F1 must
    reach the best ``predict_linear`` variant's whatever the champion.
    """

    window_hours: float = 24.0
    horizons: tuple[int, ...] = (60, 120)
    every_minutes: int = 5
    f1_tolerance: float = 0.02
    false_alarms_tolerance: float = 0.25  # per day
    mae_tolerance: float = 0.10  # relative
    #: MAE of minutes is compared only when both models warned this many checks before a crossing
    mae_min_hits: int = 10
    #: thresholds per series besides the catalogue one: these quantiles of the data before the
    #: window (in the metric's direction), so every series has crossings to be judged on
    quantiles: tuple[float, ...] = (0.99,)
    allow_shrink: bool = False

    def as_params(self) -> dict[str, str]:
        return {f"gate.{k}": str(v) for k, v in asdict(self).items()}

    def replay(self) -> ReplayConfig:
        return ReplayConfig(horizons=self.horizons, every_minutes=self.every_minutes)


@dataclass
class GateDecision:
    promote: bool
    reason: str
    #: one row per (model, predictor, horizon): ``summarize``'s metrics of each model's replay
    scores: pl.DataFrame = field(default_factory=pl.DataFrame)
    skipped: dict[str, str] = field(default_factory=dict)  # case -> why it was not scored


def gate_cases(series: pl.DataFrame, series_ids: set[str], window_start: datetime,
               config: GateConfig) -> list[SeriesCase]:
    """The cases both models replay: per series its catalogue threshold and the history quantiles."""
    wanted = series.filter(pl.col(s.SERIES_ID).is_in(sorted(series_ids)))
    # one pass over the frame: filtering it per series made the gate quadratic in series count
    by_series = wanted.filter(pl.col(s.TS) >= window_start - WARMUP).partition_by(
        s.SERIES_ID, as_dict=True, maintain_order=False)
    history = {key[0]: frame[s.VALUE].drop_nulls().drop_nans() for key, frame in
               wanted.filter(pl.col(s.TS) < window_start).partition_by(s.SERIES_ID, as_dict=True).items()}
    cases = []
    for (sid,), data in sorted(by_series.items()):
        spec = s.spec_for(s.split_series_id(sid)[1])
        before = history.get(sid, pl.Series(s.VALUE, [], dtype=pl.Float64))
        rules = [str(spec.threshold)] if np.isfinite(spec.threshold) else []
        if before.len():
            rules += [f"{float(before.quantile(q if spec.direction == 'above' else 1 - q)):.6g}"
                      for q in config.quantiles]
        for rule in dict.fromkeys(rules):  # a quantile equal to the catalogue threshold once
            (case,) = cases_from_series(data, {sid: (rule, spec.direction)}, window_start)
            case.name = f"{sid} {spec.direction} {case.threshold:g}"
            cases.append(case)
    return cases


def replay_bundle(bundle: ModelBundle, cases: list[SeriesCase] | CasesToRead, config: GateConfig,
                  skipped: dict[str, str], engine: str = "local", n_jobs: int = 1,
                  predictors: tuple[str, ...] | None = None) -> Replayed:
    """The bundle's answers on every case it has a model for, scored; a failing case goes to ``skipped``.

    Series fan out over ``engine`` (``training.fanout``) with all of a series' cases in one task.
    With :class:`CasesToRead`, each batch's worker reads its series' rows and builds their
    cases (:func:`gate_cases`) itself. Each worker scores its cases as it replays them
    (:func:`~training.evaluation.metrics.tally`): only those tallies come back, never the
    rows, so the gate's memory does not grow with the checks replayed. ``predictors`` (if
    given) limits them (the champion's baselines repeat the candidate's).
    """
    by_series: dict[str, list[SeriesCase] | list[str]] = {}
    read = None
    if isinstance(cases, CasesToRead):
        by_series = {sid: sorted(cases.leave_out.get(sid, ())) for sid in cases.series_ids}
        read = partial(_read_cases, source=cases)
    else:
        for case in cases:
            by_series.setdefault(case.name.rsplit(" ", 2)[0], []).append(case)
    items = []
    for sid, mine in by_series.items():
        if sid in bundle.forecasters:
            items.append((sid, mine))
        else:
            skipped.update({c.name: f"KeyError: {sid!r}" for c in mine})
    task = partial(_replay_cases, rule=bundle.alert_rule, replay=config.replay(), predictors=predictors)
    replayed = Replayed()
    # each model read (a lazily loaded bundle: from its file) as its batch is sent, then dropped
    for found, errors in fan_out(task, items, engine=engine, n_jobs=n_jobs,
                                 load=lambda sid, mine: (mine, bundle.forecasters[sid]), read=read):
        replayed.add(found)
        skipped.update(errors)
    return replayed


@dataclass
class Replayed:
    """A bundle's replay, scored: prealert's tallies per case (the gate compares models on the
    cases both answered), every other predictor's summed over the cases."""

    prealert: dict[tuple[str, int], Tally] = field(default_factory=dict)  # (case, horizon)
    others: dict[tuple[str, int], Tally] = field(default_factory=dict)  # (predictor, horizon)

    def add(self, found: list[tuple[str, str, int, Tally]]) -> None:
        for case, predictor, h, t in found:
            if predictor == PREALERT:
                self.prealert[case, h] = t
            else:
                self.others[predictor, h] = merged(self.others.get((predictor, h)), t)

    @property
    def cases(self) -> set[str]:
        return {case for case, _ in self.prealert}

    def is_empty(self) -> bool:
        return not self.prealert and not self.others

    def summary(self, cases: set[str] | None = None) -> pl.DataFrame:
        """:func:`~training.evaluation.metrics.summarize` of the replay's rows (prealert's on
        ``cases`` alone if given, and then no other predictor)."""
        by_horizon: dict[int, list[Tally]] = {}
        for (case, h), t in self.prealert.items():
            if cases is None or case in cases:
                by_horizon.setdefault(h, []).append(t)
        rows = [{"predictor": PREALERT, "horizon": h, **score(ts)} for h, ts in by_horizon.items()]
        if cases is None:
            rows += [{"predictor": p, "horizon": h, **score([t])} for (p, h), t in self.others.items()]
        return pl.DataFrame(rows).sort(["predictor", "horizon"]) if rows else pl.DataFrame()


@dataclass
class CasesToRead:
    """The gate's cases of ``series_ids`` as the workers build them from ``source``'s rows
    (:func:`gate_cases`), less the case names in ``leave_out`` (by series)."""

    source: SeriesFile
    series_ids: list[str]
    window_start: datetime
    config: GateConfig
    leave_out: dict[str, set[str]] = field(default_factory=dict)


def _read_cases(batch, source: CasesToRead) -> list:
    """In a worker: the cases of a batch of series, from their rows read at once."""
    sids = [sid for sid, _ in batch]
    rows = source.source.rows(sids, (s.SERIES_ID, s.TS, s.VALUE))
    built: dict[str, list[SeriesCase]] = {}
    for case in gate_cases(rows, set(sids), source.window_start, source.config):
        built.setdefault(case.name.rsplit(" ", 2)[0], []).append(case)
    return [(sid, ([c for c in built.get(sid, []) if c.name not in set(leave_out)], model))
            for sid, (leave_out, model) in batch]


def _replay_cases(sid: str, payload, rule, replay, predictors: tuple[str, ...] | None = None
                  ) -> tuple[list[tuple[str, str, int, Tally]], dict[str, str]]:
    """One series' cases replayed by its model and scored (in a worker): per case, predictor and
    horizon its :class:`~training.evaluation.metrics.Tally`; and errors by case."""
    cases, model = payload
    found, errors = [], {}
    for case in cases:
        try:
            answered = given_columns(case, model, rule, replay, predictors)
        except (ValueError, KeyError) as exc:
            errors[case.name] = f"{type(exc).__name__}: {exc}"
            continue
        for predictor, h, columns in answered:  # scored from the arrays: a frame only for onsets
            onsets = columns["onset_minutes"]
            found.append((case.name, predictor, h, tally_columns(
                columns, h, replay.every_minutes, intervals="earliest" in columns,
                onsets=pl.DataFrame({k: columns[k] for k in ("ts", "warn", "onset_minutes")})
                if np.isfinite(onsets).any() else None)))
    return found, errors


def _at(scores: pl.DataFrame, predictor: str, h: int) -> dict:
    if scores.is_empty():
        return {}
    rows = scores.filter((pl.col("predictor") == predictor) & (pl.col("horizon") == h))
    return rows.row(0, named=True) if rows.height else {}


def judge(candidate: ModelBundle, champion: ModelBundle | None, series: pl.DataFrame | SeriesFile,
          window_start: datetime, config: GateConfig | None = None, *, engine: str = "local",
          n_jobs: int = 1) -> GateDecision:
    """Promote ``candidate`` over ``champion``? Both replay ``series`` from ``window_start`` on.

    In order: the candidate covers every series the champion serves (unless ``allow_shrink``);
    the window holds crossings to judge on; per horizon the candidate's F1 reaches the best
    ``predict_linear`` variant's (never promoted otherwise); and, on the series both serve,
    it is no worse than the champion on F1, false alarms per day and MAE of minutes, within
    the config's tolerances. Replays fan out over ``engine`` with ``n_jobs`` as training does.
    """
    config = config or GateConfig()
    ours, theirs = set(candidate.forecasters), set(champion.forecasters) if champion else set()
    missing = sorted(theirs - ours)
    if missing and not config.allow_shrink:
        return GateDecision(False, f"covers {len(ours & theirs)} of the champion's {len(theirs)} "
                                   f"series (missing {', '.join(missing[:3])}"
                                   f"{', ...' if len(missing) > 3 else ''}); --allow-shrink accepts")
    skipped: dict[str, str] = {}
    if isinstance(series, SeriesFile):  # the workers read their own series' rows
        cases = CasesToRead(series, sorted(ours & set(series.ids())), window_start, config)
    else:
        cases = gate_cases(series, ours, window_start, config)
    mine = replay_bundle(candidate, cases, config, skipped, engine, n_jobs)
    if mine.is_empty():
        return GateDecision(False, "the candidate answered no check in the gate window", skipped=skipped)
    scores = mine.summary().with_columns(pl.lit("candidate").alias("model"))
    reasons = []
    for h in config.horizons:
        me = _at(scores, PREALERT, h)
        if not me or me["tp"] + me["fn"] == 0:
            return GateDecision(False, f"no crossing within {h} min in the gate window: nothing to "
                                       "judge on", scores, skipped)
        lines = scores.filter(pl.col("predictor").str.starts_with("predict_linear")
                              & (pl.col("horizon") == h)).sort("f1", descending=True)
        best = lines.row(0, named=True)
        if me["f1"] <= 0 or me["f1"] < best["f1"]:
            return GateDecision(False, f"loses to {best['predictor']} at H={h}: F1 {me['f1']:.3f} "
                                       f"< {best['f1']:.3f} ({_evidence(me)})", scores, skipped)
    if champion is None:
        return GateDecision(True, "no champion; beats predict_linear: " + _f1s(scores, config),
                            scores, skipped)
    if isinstance(cases, CasesToRead):  # the same cases, built again where they are replayed
        left_out: dict[str, set[str]] = {}
        for name in skipped:
            left_out.setdefault(name.rsplit(" ", 2)[0], set()).add(name)
        common = dataclasses.replace(cases, series_ids=[i for i in cases.series_ids if i in theirs],
                                     leave_out=left_out)
        names = None
    else:
        common = [c for c in cases if c.name.rsplit(" ", 2)[0] in theirs and c.name not in skipped]
        names = [c.name for c in common]
    champ = replay_bundle(champion, common, config, skipped, engine, n_jobs, predictors=(PREALERT,))
    if champ.is_empty():
        return GateDecision(True, "the champion answered no check in the window (step or horizon "
                                  "it cannot serve); beats predict_linear: " + _f1s(scores, config),
                            scores, skipped)
    # (read by the workers, the champion replayed only common cases: every name it answered)
    answered = champ.cases
    names = sorted(answered if names is None else set(names) & answered)
    pair = {m: replayed.summary(set(names)) for m, replayed in (("candidate", mine), ("champion", champ))}
    scores = pl.concat([scores, *(v.with_columns(pl.lit(f"{m} on common").alias("model"))
                                  for m, v in pair.items())], how="diagonal_relaxed")
    said = []
    for h in config.horizons:
        me, them = _at(pair["candidate"], PREALERT, h), _at(pair["champion"], PREALERT, h)
        if not me or not them:
            continue
        if me["f1"] < them["f1"] - config.f1_tolerance:
            reasons.append(f"F1 {me['f1']:.3f} < champion {them['f1']:.3f} at H={h}")
        if me["false_alarms_per_day"] > them["false_alarms_per_day"] + config.false_alarms_tolerance:
            reasons.append(f"false alarms/day {me['false_alarms_per_day']:.2f} > champion "
                           f"{them['false_alarms_per_day']:.2f} at H={h}")
        if (min(me["tp"], them["tp"]) >= config.mae_min_hits
                and me["mae_minutes"] > them["mae_minutes"] * (1 + config.mae_tolerance)):
            reasons.append(f"MAE {me['mae_minutes']:.1f} min > champion {them['mae_minutes']:.1f} "
                           f"at H={h}")
        said.append(f"H={h} F1 {me['f1']:.3f} vs {them['f1']:.3f}, false alarms/day "
                    f"{me['false_alarms_per_day']:.2f} vs {them['false_alarms_per_day']:.2f}, "
                    f"MAE {me['mae_minutes']:.1f} vs {them['mae_minutes']:.1f} min")
    if reasons:
        return GateDecision(False, "worse than the champion: " + "; ".join(reasons), scores, skipped)
    shrink = f" (accepted shrink: {len(missing)} series dropped)" if missing else ""
    return GateDecision(True, "no worse than the champion on " + f"{len(names)} cases: "
                        + "; ".join(said) + shrink, scores, skipped)


def _evidence(row: dict) -> str:
    """What a gate figure rests on, so an operator can weigh a verdict drawn from one quiet day."""
    return (f"on {row['tp'] + row['fn']} checks with a crossing due, {row.get('crossings', 0)} "
            f"crossings, {row.get('onsets', 0)} onsets")


def _f1s(scores: pl.DataFrame, config: GateConfig) -> str:
    return ", ".join(f"F1 {(me := _at(scores, PREALERT, h))['f1']:.3f} at H={h} ({_evidence(me)})"
                     for h in config.horizons)

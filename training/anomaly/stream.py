"""Causal anomaly scoring of a metrics table: train on the start, score every row from the past only."""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from training.anomaly.detector import Z_KIND, WorkloadAnomalyDetector
from training.anomaly.features import CausalFeatures, median_step_minutes, minute_clock
from training.anomaly.tail import TailModel

TIME_COLUMNS = ("timestamp", "ts", "time", "ds", "datetime", "date")
SCORE = "anomaly_score"
TOP = "top_metrics"
#: the score's parts, written beside it (see :func:`score_table`)
PARTS = ("tail_probability", "forest_score", "residual_score")
ONSET = "onset_score"
#: a residual |z| this far beyond the training tail is one more decade of rarity (when the tail is flat)
RESIDUAL_TAIL_SCALE = 0.1
#: the combined surprise is already in decades: beyond its training tail, one unit is one decade
SURPRISE_TAIL_SCALE = 1.0 / np.log(10.0)


@dataclass
class StreamConfig:
    """How the causal scorer builds features, fits, refits and explains; durations in minutes."""

    expectation_minutes: float | None = None  # None: 60, or 12 sampling intervals when longer
    spread_minutes: float | None = None  # None: 10, or 3 sampling intervals when longer
    #: the residual is from the recent median or the median of this longer past, whichever is nearer
    #: (a return to the usual level after an event is no departure); None: the recent median only
    baseline_minutes: float | None = 1440.0
    kinds: tuple[str, ...] = ("z", "diff", "spread")
    adaptive_scale: bool = False  # residual in max(training sd, sd of the expectation window)
    combination: str = "max"  # the score: surprise of the larger ("max") or of the sum ("sum") of the parts
    residual_calibration: str = "entity"  # one tail for a row's largest |z| ("entity"), or one per "metric"
    onset_minutes: float | None = 240.0  # the onset score: surprise beyond the largest of this past window
    onset_rows: int = 48  # ... and the window holds at least this many previous rows (hourly data: 2 days)
    retrain_every_minutes: float | None = None  # refit on the past this often (None: fit once)
    history_minutes: float | None = None  # a refit sees only this much past: the normal range follows drift
    calibration_rows: int = 20_000  # the forest and tails see at most this many of the latest training rows
    explain_above: float = 3.0  # explain rows at least this surprising (a re-score per metric)
    top: int = 3
    detector: dict = field(default_factory=dict)  # WorkloadAnomalyDetector hyperparameters

    def windows(self, step_minutes: float) -> tuple[float, float]:
        """(expectation, spread) minutes for data sampled every ``step_minutes``."""
        exp = self.expectation_minutes or max(60.0, 12 * step_minutes)
        spread = self.spread_minutes or max(10.0, 3 * step_minutes)
        return float(exp), float(spread)


def combine(parts: dict[str, np.ndarray], how: str = "max") -> np.ndarray:
    """The parts' surprises combined: the larger ("max"), or summed ("sum": -log10 of the product of
    their tail probabilities)."""
    if how == "max":
        return np.maximum(parts["forest"], parts["residual"])
    if how == "sum":
        return parts["forest"] + parts["residual"]
    raise ValueError(f"combination {how!r}: expected 'max' or 'sum'")


@dataclass
class EntityModel:
    """One fitted scorer: causal features, the forest over them, and the tail models of the parts.

    A row's parts are two surprises (``-log10`` of a training tail probability): the forest's
    raw score, and the largest over metrics of the residual |z| (the forest dilutes an extreme
    move of one metric among many columns, and its own score stops growing beyond the training
    range). The score is the surprise of their sum under its own training distribution, so
    ``s`` keeps its meaning: a row this unusual is expected once every 10^s training rows.
    """

    features: CausalFeatures
    detector: WorkloadAnomalyDetector
    combination: str = "max"

    @classmethod
    def fit(cls, values: np.ndarray, metrics: list[str], config: StreamConfig,
            ts_ns: np.ndarray | None = None) -> EntityModel:
        values = np.asarray(values, dtype=np.float64)
        ts_ns = minute_clock(len(values)) if ts_ns is None else np.asarray(ts_ns, dtype=np.int64)
        exp, spread = config.windows(median_step_minutes(ts_ns))
        base = max(config.baseline_minutes, 2 * exp) if config.baseline_minutes else None
        cf = CausalFeatures(exp, spread, tuple(config.kinds), config.adaptive_scale, base)
        cf.fit(values, metrics, ts_ns)
        feats = cf.transform(values, ts_ns)
        w = cf.warmup(ts_ns)
        feats = feats[w:] if len(feats) - w >= 10 else feats
        cal = feats[-config.calibration_rows:]  # the latest rows: the normal range follows drift
        det = WorkloadAnomalyDetector(**config.detector).fit(cal, metrics, cf.columns_)
        self = cls(cf, det, config.combination)
        self.calibration_rows_ = len(cal)  # the last rows before the fit's end; their raw scores are known
        zs = self._abs_z(cal)
        if config.residual_calibration == "entity":  # how rare a row's largest |z| is, whichever metric
            self.residual_tails_ = [TailModel.fit(zs.max(axis=1), RESIDUAL_TAIL_SCALE)] if zs.shape[1] else []
        elif config.residual_calibration == "metric":
            self.residual_tails_ = [TailModel.fit(zs[:, j], RESIDUAL_TAIL_SCALE) for j in range(zs.shape[1])]
        else:
            raise ValueError(f"residual_calibration {config.residual_calibration!r}: "
                             "expected 'entity' or 'metric'")
        parts = self.parts(cal, det.train_raw_)
        self.total_tail_ = TailModel.fit(combine(parts, self.combination), SURPRISE_TAIL_SCALE)
        return self

    def _abs_z(self, feats: np.ndarray) -> np.ndarray:
        """|residual z| per metric (unknown counts as at the expectation, 0); no z kind: no column."""
        cols = [j for j, (_, k) in enumerate(self.features.columns_) if k == Z_KIND]
        return np.abs(np.nan_to_num(np.atleast_2d(feats)[:, cols], nan=0.0))

    def parts(self, feats: np.ndarray, raw: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per row: ``forest`` and ``residual`` surprises, ``residual_each`` (rows x metrics), ``metric``.

        ``raw``: the forest's raw scores of these rows when already known.
        """
        feats = np.atleast_2d(feats)
        raw = self.detector.raw_score(feats) if raw is None else raw
        forest = self.detector.tail_.surprise(raw)
        zs = self._abs_z(feats)
        if zs.shape[1]:
            if len(self.residual_tails_) == 1:  # one tail for every metric (entity calibration)
                each = self.residual_tails_[0].surprise(zs)
            else:
                each = np.column_stack([t.surprise(zs[:, j]) for j, t in enumerate(self.residual_tails_)])
            metric = np.argmax(each, axis=1)
            residual = each[np.arange(len(each)), metric]
        else:
            each, metric, residual = zs, np.zeros(len(feats), dtype=int), np.zeros(len(feats))
        return {"forest": forest, "residual": residual, "residual_each": each, "metric": metric}

    def score(self, feats: np.ndarray,
              raw: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The surprise of each row (``-log10`` tail probability, >= 0, no ceiling) and its parts.

        ``raw``: the forest's raw scores of these rows when already known.
        """
        parts = self.parts(feats, raw)
        return self.total_tail_.surprise(combine(parts, self.combination)), parts


@dataclass
class StreamScores:
    """What :func:`score_causally` gives per row: the score, its parts, explanations, and the fits."""

    surprise: np.ndarray
    forest: np.ndarray
    residual: np.ndarray
    residual_each: np.ndarray  # (rows, metrics) per-metric residual surprise
    residual_metric: np.ndarray  # index of the metric with the largest residual surprise
    training: np.ndarray  # bool: scored in-sample by the first fit
    top: list[list[dict]]
    refits: list[int]  # first row scored by each fit
    onset: np.ndarray | None = None  # surprise beyond the previous onset window's largest (onset_scores)


def onset_scores(surprise: np.ndarray, ts_ns: np.ndarray, minutes: float, rows: int = 0) -> np.ndarray:
    """How many decades rarer each row is than the rarest row of the previous ``minutes`` (>= 0).

    An event that stays unusual scores high at its start and about 0 while it lasts, so one
    threshold means "something rarer than anything in the last ``minutes`` began"; the rows
    before any past (the first) keep their surprise. The window is a duration and holds at
    least the previous ``rows`` rows (so on hourly data a 4-hour window is not 4 rows):
    row ``t`` sees the rows in ``[t - minutes, t)`` and rows ``t - rows .. t - 1``. Causal.
    """
    s = np.asarray(surprise, dtype=np.float64)
    if minutes <= 0 or rows < 0:
        raise ValueError(f"onset window: minutes must be positive and rows >= 0, got {minutes}, {rows}")
    frame = pl.DataFrame({"s": np.nan_to_num(s, nan=0.0),
                          "t": pl.Series(np.asarray(ts_ns, dtype=np.int64)).cast(pl.Datetime("ns"))})
    by_time = pl.col("s").rolling_max_by("t", f"{int(minutes * 60)}s", closed="left").fill_null(0.0)
    if rows > 0:  # the union of the two windows: the larger of their maxima
        by_rows = pl.col("s").shift(1).rolling_max(rows, min_samples=1).fill_null(0.0)
        by_time = pl.max_horizontal(by_time, by_rows)
    past = frame.select(by_time.alias("s"))["s"].to_numpy()
    return np.where(np.isnan(s), np.nan, np.maximum(s - past, 0.0))


def refit_rows(ts_ns: np.ndarray, first_scored: int, config: StreamConfig) -> list[int]:
    """Rows at which a new fit takes over: the first scored row, then whenever the history has
    doubled or ``retrain_every_minutes`` has passed, whichever comes first."""
    if not config.retrain_every_minutes:
        return [first_scored]
    every = int(config.retrain_every_minutes * 60e9)
    out, n = [first_scored], len(ts_ns)
    while True:
        last = out[-1]
        by_time = int(np.searchsorted(ts_ns, ts_ns[last] + every, side="left"))
        nxt = min(2 * last, max(by_time, last + 1))
        if nxt >= n:
            return out
        out.append(nxt)


def score_causally(values: np.ndarray, metrics: list[str], first_scored: int,
                   config: StreamConfig | None = None, ts_ns: np.ndarray | None = None) -> StreamScores:
    """Score every row of an (n, n_metrics) matrix at sorted unique times, from ``first_scored`` causally.

    Rows before ``first_scored`` are the training part, scored in-sample by the first fit
    (flagged ``training``). The fit that scores row ``t >= first_scored`` saw rows ``< t`` only
    (the last refit at or before ``t``, see :func:`refit_rows`; with ``history_minutes`` only
    that much of the past); the features of row ``t`` use rows ``<= t``.
    """
    config = config or StreamConfig()
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    ts_ns = minute_clock(n) if ts_ns is None else np.asarray(ts_ns, dtype=np.int64)
    if not 10 <= first_scored <= n:
        raise ValueError(f"need at least 10 training rows before the first scored one, got {first_scored} "
                         f"of {n}")
    nan = np.full(n, np.nan)
    res = StreamScores(nan.copy(), nan.copy(), nan.copy(), np.full((n, len(metrics)), np.nan),
                       np.zeros(n, dtype=int), np.arange(n) < first_scored, [[] for _ in range(n)],
                       refit_rows(ts_ns, first_scored, config))
    bounds = res.refits + [n]
    for k, start in enumerate(res.refits):
        end = bounds[k + 1]
        lo = 0
        if config.history_minutes:
            lo = int(np.searchsorted(ts_ns, ts_ns[start] - int(config.history_minutes * 60e9), side="left"))
            lo = min(lo, start - 10)
        model = EntityModel.fit(values[lo:start], metrics, config, ts_ns[lo:start])
        a = 0 if k == 0 else start  # the first fit also scores its training rows
        ctx = max(0, int(np.searchsorted(ts_ns, ts_ns[a] - int(
            (model.features.past_minutes + 1) * 60e9))) - 1)
        feats = model.features.transform(values[ctx:end], ts_ns[ctx:end])[a - ctx:]
        raw = None
        if k == 0 and lo == 0:  # the fit already scored its calibration rows, the last ones before `start`
            c = start - model.calibration_rows_
            raw = np.concatenate([model.detector.raw_score(feats[:c]) if c else np.zeros(0),
                                  model.detector.train_raw_, model.detector.raw_score(feats[start:])
                                  if end > start else np.zeros(0)])
        s, parts = model.score(feats, raw)
        res.surprise[a:end], res.forest[a:end], res.residual[a:end] = s, parts["forest"], parts["residual"]
        res.residual_each[a:end] = parts["residual_each"] if parts["residual_each"].shape[1] else 0.0
        res.residual_metric[a:end] = parts["metric"]
        for i in np.flatnonzero(s >= config.explain_above):
            res.top[a + i] = model.detector.explain(feats[i], config.top)
    if config.onset_minutes:
        res.onset = onset_scores(res.surprise, ts_ns, config.onset_minutes, config.onset_rows)
    return res


# --- files: one series (timestamp, value), long (ts, metric, value[, host]) or wide --------------
HOST_COLUMNS = ("host", "node", "entity", "instance")


def read_table(path: str | Path) -> pl.DataFrame:
    """A CSV (times kept as written) or Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pl.read_parquet(path)
    if path.suffix.lower() in (".csv", ".txt"):
        return pl.read_csv(path, try_parse_dates=False, infer_schema_length=10_000)
    raise ValueError(f"{path}: expected a .csv or .parquet file")


def _time_column(frame: pl.DataFrame) -> str:
    for c in frame.columns:
        if c.lower() in TIME_COLUMNS:
            return c
    raise ValueError(f"no time column: expected one of {TIME_COLUMNS}, got {frame.columns}")


def _as_ns(col: pl.Series) -> np.ndarray:
    """Times as int64 ns (UTC when zoned): datetimes, dates, ISO text, or epochs (s/ms/us/ns by size)."""
    if col.dtype == pl.String:
        try:
            col = col.str.to_datetime(time_zone="UTC")
        except pl.exceptions.PolarsError as exc:
            raise ValueError(f"column {col.name!r}: unparseable times ({str(exc).splitlines()[0]})") from None
    if col.dtype == pl.Date:
        col = col.cast(pl.Datetime("us"))
    if isinstance(col.dtype, pl.Datetime):
        if col.null_count():
            raise ValueError(f"column {col.name!r}: {col.null_count()} empty times")
        return col.dt.cast_time_unit("ns").cast(pl.Int64).to_numpy()
    if col.dtype.is_numeric():
        v = col.cast(pl.Float64).to_numpy()
        big = float(np.nanmedian(np.abs(v))) if len(v) else 0.0
        unit = next(u for lim, u in ((1e11, 1e9), (1e14, 1e6), (1e17, 1e3), (np.inf, 1.0)) if big < lim)
        return (v * unit).astype(np.int64)
    raise ValueError(f"column {col.name!r}: times of type {col.dtype} are not understood")


@dataclass
class ScoreReport:
    """What scoring a table noticed: rows, training part, duplicates, and warnings about the data."""

    rows: int = 0
    training_rows: int = 0
    duplicate_times: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.rows} rows ({self.training_rows} training, flagged), "
                f"{self.duplicate_times} duplicate timestamps averaged")


def _training_count(ts_ns: np.ndarray, *, train_rows: int | None, train_until: datetime | None,
                    train_fraction: float | None, train_duration: str | None) -> int:
    if train_rows is not None:
        return min(int(train_rows), len(ts_ns))
    if train_until is not None:
        until = train_until if train_until.tzinfo else train_until.replace(tzinfo=None)
        ns = int(np.datetime64(until.replace(tzinfo=None), "ns").astype(np.int64))
        return int(np.searchsorted(ts_ns, ns, side="left"))
    if train_duration:
        cut = ts_ns[0] + int(as_timedelta(train_duration).total_seconds() * 1e9)
        return int(np.searchsorted(ts_ns, cut, side="left"))
    return int(round((0.5 if train_fraction is None else train_fraction) * len(ts_ns)))


def _check_sampling(ts_ns: np.ndarray, config: StreamConfig, where: str) -> list[str]:
    """Warnings when the times are not what the windows assume (irregular, gaps, windows too short)."""
    out = []
    d = np.diff(ts_ns)
    if len(d) < 2:
        return out
    step = median_step_minutes(ts_ns)
    dm = d / 60e9
    gaps = int((dm > 3 * step).sum())
    irregular = float(np.mean(np.abs(dm - step) > 0.1 * step))
    if gaps:
        out.append(f"{where}{gaps} gaps longer than 3 sampling intervals ({step:g} min); "
                   "features restart after each (changes across a gap are unknown)")
    if irregular > 0.05:
        out.append(f"{where}irregular sampling: {irregular:.0%} of intervals differ from the median "
                   f"{step:g} min by more than 10%")
    exp, spread = config.windows(step)
    for name, minutes, want in (("expectation", exp, 4), ("spread", spread, 3)):
        if minutes / step < want:
            out.append(f"{where}the {name} window ({minutes:g} min) holds fewer than {want} rows at "
                       f"the median interval of {step:g} min; widen it")
    return out


def score_table(frame: pl.DataFrame, *, train_rows: int | None = None, train_until: datetime | None = None,
                train_fraction: float | None = None, train_duration: str | None = None,
                config: StreamConfig | None = None) -> tuple[pl.DataFrame, ScoreReport]:
    """Score every row of a table: the input's rows, in order, with their columns as read, plus scores.

    Tables: one series (``timestamp, value``), long (``ts, metric, value[, host]``) or wide (a
    time column and one column per metric); a ``host`` (or node/entity/instance) column splits
    entities, each scored on its own. Each entity's training part is its first ``train_rows``
    timestamps, or those before ``train_until``, or its first ``train_duration`` (``"7d"``), or its
    first ``train_fraction`` (default half); it is scored in-sample and flagged ``training``;
    every later timestamp is scored causally (:func:`score_causally`). Rows sharing a timestamp
    (a repeated DST hour, a double export) are averaged into one, deterministically, all get
    that time's score, and the report counts them.

    Added columns: ``anomaly_score`` (``s = -log10 p``: a row this unusual is expected once every
    10^s training rows), ``tail_probability`` (``p``), ``forest_score`` and ``residual_score``
    (the parts, as surprises; in a long table ``residual_score`` is the row's own metric's, in a
    wide one the largest, named by ``residual_metric``), ``onset_score`` (how many decades rarer
    than the rarest row of the previous ``config.onset_minutes``, at least ``config.onset_rows``
    rows: what to alert on, an event scores
    at its start only), ``training``, and for several metrics
    ``top_metrics`` (``d05:+4.2 d12:-3.1`` where the score is at least ``config.explain_above``).
    """
    config = config or StreamConfig()
    if not frame.height:
        raise ValueError("the table has no rows")
    tcol = _time_column(frame)
    host = next((c for c in frame.columns if c.lower() in HOST_COLUMNS), None)
    long = "metric" in frame.columns
    if long and "value" not in frame.columns:
        raise ValueError("a long table needs a 'value' column beside 'metric'")
    work = frame.with_columns(_t=pl.Series(_as_ns(frame[tcol])), _row=pl.int_range(frame.height))
    key = ["_h", "_t"]
    work = work.with_columns(_h=pl.col(host).cast(pl.String) if host else pl.lit(""))
    if long:
        work = work.with_columns(pl.col("metric").cast(pl.String))
        metrics = sorted(work["metric"].unique().drop_nulls().to_list())
        wide = work.pivot(on="metric", index=key, values="value", aggregate_function="mean")
        dup = work.group_by(key + ["metric"]).len().filter(pl.col("len") > 1).height
    else:
        metrics = [c for c in frame.columns if c not in (tcol, host) and frame.schema[c].is_numeric()]
        if not metrics:
            raise ValueError(f"no numeric metric columns in {frame.columns}")
        wide = work.group_by(key, maintain_order=True).agg(pl.col(metrics).cast(pl.Float64).mean())
        dup = work.height - wide.height
    wide = wide.sort(key)  # stable and total: the same input always gives the same order
    report = ScoreReport(rows=frame.height, duplicate_times=dup)
    if dup:
        report.warnings.append(f"{dup} rows share a timestamp with another (same entity"
                               f"{' and metric' if long else ''}): averaged, each gets that time's score")
    pieces = []
    for g in wide.partition_by("_h", maintain_order=True):
        where = f"{g['_h'][0]}: " if host else ""
        ts_ns = g["_t"].to_numpy()
        values = g.select(metrics).cast(pl.Float64).to_numpy()
        first = _training_count(ts_ns, train_rows=train_rows, train_until=train_until,
                                train_fraction=train_fraction, train_duration=train_duration)
        if first < 10:
            raise ValueError(f"{where}the training part has {first} timestamps; at least 10 are needed")
        report.warnings += _check_sampling(ts_ns, config, where)
        constant = np.nanmax(values[:first], axis=0) == np.nanmin(values[:first], axis=0)
        if constant.all():
            report.warnings.append(f"{where}every metric is constant in the training part: rows "
                                   "at that level score 0, any move scores high")
        res = score_causally(values, metrics, first, config, ts_ns)
        report.training_rows += int(res.training.sum())
        cols = {"_h": g["_h"], "_t": g["_t"], SCORE: res.surprise,
                "tail_probability": 10.0 ** -res.surprise, "forest_score": res.forest,
                "residual_score": res.residual}
        if res.onset is not None:
            cols[ONSET] = res.onset
        cols["training"] = res.training
        if long:
            cols.update({f"_r_{m}": res.residual_each[:, j] for j, m in enumerate(metrics)})
        elif len(metrics) > 1:
            cols["residual_metric"] = [metrics[j] for j in res.residual_metric]
        if len(metrics) > 1:
            cols[TOP] = [" ".join(f"{e['metric']}:{e['z']:+.1f}" for e in row) for row in res.top]
        pieces.append(pl.DataFrame(cols))
    scores = pl.concat(pieces)
    out = work.join(scores, on=key, how="left").sort("_row")
    if long:  # each long row carries its own metric's residual part
        rcols = [f"_r_{m}" for m in metrics]
        out = out.with_columns(residual_score=pl.coalesce(
            pl.when(pl.col("metric") == m).then(pl.col(c)) for m, c in zip(metrics, rcols, strict=True)))
        out = out.drop(rcols)
    return out.drop("_t", "_row", "_h"), report


def input_files(pattern: str | Path) -> list[Path]:
    """A file, every CSV/Parquet file in a folder (recursively), or a glob; sorted."""
    path = Path(pattern)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.suffix.lower() in (".csv", ".parquet", ".pq")]
    else:
        found = [Path(p) for p in globlib.glob(str(pattern), recursive=True) if Path(p).is_file()]
    if not found:
        raise FileNotFoundError(f"{pattern}: no such file, or no CSV/Parquet file in it")
    return sorted(found)


def as_timedelta(text: str) -> timedelta:
    """``"90m"``, ``"12h"``, ``"7d"`` or ``"2w"`` as a timedelta."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    text = text.strip().lower()
    try:
        return timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"duration {text!r}: expected a number and a unit of s, m, h, d or w") from None


def write_table(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write CSV or Parquet by suffix, atomically (a retried job leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() in (".parquet", ".pq"):
        frame.write_parquet(tmp)
    else:
        frame.write_csv(tmp)
    tmp.replace(path)
    return path

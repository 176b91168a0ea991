"""Causal anomaly scoring of a metrics table: train on the start, score every later row from the past only."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

from training.anomaly.detector import WorkloadAnomalyDetector
from training.anomaly.features import CausalFeatures

TIME_COLUMNS = ("timestamp", "ts", "time", "ds", "datetime", "date")
SCORE = "anomaly_score"
TOP = "top_metrics"


@dataclass
class StreamConfig:
    """How the causal scorer builds features, fits, retrains and explains."""

    expectation_minutes: int = 60  # rows of the past median the residual is measured from
    spread_minutes: int = 10
    kinds: tuple[str, ...] = ("z", "diff", "spread")
    retrain_every: int | None = None  # rows between refits on all rows before; None = fit once
    explain_above: float = 0.99  # explain rows scoring at least this (explaining costs a re-score per metric)
    top: int = 3
    combine_z: bool = True  # score = the rarer of the forest and the largest residual |z|; see EntityModel
    detector: dict = field(default_factory=dict)  # WorkloadAnomalyDetector hyperparameters


def _ecdf(sorted_train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Share of training values at or below each x."""
    return np.searchsorted(sorted_train, x, side="right") / max(len(sorted_train), 1)


@dataclass
class EntityModel:
    """One fitted scorer: its causal features, the detector over them, and the score calibration.

    With ``combine_z`` the score is the larger of two rarities, the forest's and that of the
    largest per-metric residual |z| (the forest dilutes an extreme move of one metric among many
    columns), recalibrated so that 0.99 still means "rarer than 99% of training minutes".
    """

    features: CausalFeatures
    detector: WorkloadAnomalyDetector
    combine_z: bool = True

    @classmethod
    def fit(cls, values: np.ndarray, metrics: list[str], config: StreamConfig) -> EntityModel:
        cf = CausalFeatures(config.expectation_minutes, config.spread_minutes, tuple(config.kinds))
        cf.fit(values, metrics)
        feats = cf.transform(values)[cf.warmup:]
        det = WorkloadAnomalyDetector(**config.detector).fit(feats, metrics, cf.columns_)
        self = cls(cf, det, config.combine_z and "z" in config.kinds)
        self.train_raw_ = np.sort(det.raw_score(feats))
        self.train_zmax_ = np.sort(self.zmax(feats))
        self.train_combined_ = np.sort(self._combined(feats))
        return self

    def zmax(self, feats: np.ndarray) -> np.ndarray:
        """Largest |residual z| over metrics in each row (unknown counts as 0)."""
        cols = [j for j, (_, k) in enumerate(self.features.columns_) if k == "z"]
        return np.abs(np.nan_to_num(np.atleast_2d(feats)[:, cols], nan=0.0)).max(axis=1)

    def _combined(self, feats: np.ndarray) -> np.ndarray:
        return np.maximum(_ecdf(self.train_raw_, self.detector.raw_score(feats)),
                          _ecdf(self.train_zmax_, self.zmax(feats)))

    def score(self, feats: np.ndarray) -> np.ndarray:
        """Calibrated score in [0, 1]: the share of training minutes that scored lower."""
        if self.combine_z:
            return _ecdf(self.train_combined_, self._combined(feats))
        return self.detector.score(feats)


def score_causally(values: np.ndarray, metrics: list[str], first_scored: int,
                   config: StreamConfig | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    """Score rows ``first_scored..`` of an (n, n_metrics) matrix, each from rows before it only.

    The model that scores row ``t`` was fitted on rows ``< t`` (on all rows before the last
    refit at or before ``t``; refits every ``config.retrain_every`` rows). Features of row ``t``
    use rows ``<= t``. Returns the forest's raw scores and the calibrated scores (see
    :meth:`EntityModel.score`; NaN before ``first_scored``) and, per
    row, the top metrics when the calibrated score is at least ``config.explain_above``.
    """
    config = config or StreamConfig()
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    if not 10 <= first_scored <= n:
        raise ValueError(f"need at least 10 training rows before the first scored one, got {first_scored} "
                         f"of {n}")
    raw, cal = np.full(n, np.nan), np.full(n, np.nan)
    top: list[list[dict]] = [[] for _ in range(n)]
    step = config.retrain_every or n
    for start in range(first_scored, n, step):
        end = min(n, start + step)
        model = EntityModel.fit(values[:start], metrics, config)
        ctx = max(0, start - config.expectation_minutes - config.spread_minutes - 1)
        feats = model.features.transform(values[ctx:end])[start - ctx:]
        raw[start:end] = model.detector.raw_score(feats)
        cal[start:end] = model.score(feats)
        for i in np.flatnonzero(cal[start:end] >= config.explain_above):
            top[start + i] = model.detector.explain(feats[i], config.top)
    return raw, cal, top


# --- files: one series (timestamp, value), long (ts, metric, value[, host]) or wide --------------
def read_table(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pl.read_parquet(path)
    if path.suffix.lower() in (".csv", ".txt"):
        return pl.read_csv(path, try_parse_dates=True)
    raise ValueError(f"{path}: expected a .csv or .parquet file")


def _time_column(frame: pl.DataFrame) -> str:
    for c in frame.columns:
        if c.lower() in TIME_COLUMNS:
            return c
    raise ValueError(f"no time column: expected one of {TIME_COLUMNS}, got {frame.columns}")


def to_wide(frame: pl.DataFrame) -> tuple[str, str | None, pl.DataFrame, list[str]]:
    """Normalize a table to (time column, host column or None, wide frame, metric columns).

    Long tables (a ``metric`` column) are pivoted, averaging duplicate (time, metric) rows;
    a single ``value`` column is the one-series case, with metric ``value``.
    """
    tcol = _time_column(frame)
    if frame.schema[tcol] == pl.String:
        frame = frame.with_columns(pl.col(tcol).str.to_datetime())
    host = next((c for c in frame.columns if c.lower() in ("host", "node", "entity", "instance")), None)
    index = [tcol] + ([host] if host else [])
    if "metric" in frame.columns:
        if "value" not in frame.columns:
            raise ValueError("a long table needs a 'value' column beside 'metric'")
        wide = frame.pivot(on="metric", index=index, values="value", aggregate_function="mean")
    else:
        wide = frame
    metrics = [c for c in wide.columns if c not in index and wide.schema[c].is_numeric()]
    if not metrics:
        raise ValueError(f"no numeric metric columns in {frame.columns}")
    return tcol, host, wide.sort(index[::-1]), metrics


def score_table(frame: pl.DataFrame, *, train_fraction: float | None = 0.5,
                train_duration: str | None = None, config: StreamConfig | None = None) -> pl.DataFrame:
    """Score every row after the training part of each host, causally; see :func:`score_causally`.

    The training part is the first ``train_duration`` (e.g. ``"7d"``) of each host's rows, else
    the first ``train_fraction`` of them. One series in: ``timestamp, value, anomaly_score``;
    several metrics: ``timestamp[, host], anomaly_score, top_metrics`` (``d05:+4.2 d12:-3.1``,
    filled where the score is at least ``config.explain_above``). Training rows score null.
    Windows count rows, so the table should be regular (one row per minute for the defaults).
    """
    config = config or StreamConfig()
    tcol, host, wide, metrics = to_wide(frame)
    single = metrics == ["value"]
    out = []
    groups = wide.partition_by(host, maintain_order=True) if host else [wide]
    for g in groups:
        g = g.sort(tcol)
        values = g.select(metrics).cast(pl.Float64).to_numpy()
        if train_duration:
            t = g[tcol]
            cutoff = t.min() + as_timedelta(train_duration)
            first = int((t < cutoff).sum())
        else:
            first = int(round((train_fraction if train_fraction is not None else 0.5) * g.height))
        raw, cal, top = score_causally(values, metrics, first, config)
        cols = {tcol: g[tcol]}
        if host:
            cols[host] = g[host]
        if single:
            cols["value"] = g["value"]
        cols[SCORE] = pl.Series(SCORE, cal).fill_nan(None)
        if not single:
            cols[TOP] = [" ".join(f"{e['metric']}:{e['z']:+.1f}" for e in row) for row in top]
        out.append(pl.DataFrame(cols))
    return pl.concat(out)


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

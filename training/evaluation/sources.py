"""What the backtest replays: series cases from the sample export, the SMD machines, or any file."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from features import schema as s
from training.evaluation.replay import SeriesCase
from training.predict import physical_range


def threshold_from_rule(rule: str, history: np.ndarray) -> float:
    """``"quantile:0.99"`` of the history before evaluation, or a number."""
    if rule.startswith("quantile:"):
        q = float(rule.split(":", 1)[1])
        return float(np.nanquantile(history, q))
    return float(rule)


def cases_from_series(series: pl.DataFrame, rules: dict[str, tuple[str, str]],
                      eval_start: datetime) -> list[SeriesCase]:
    """Cases from a feature-job series frame; ``rules`` maps series id -> (threshold rule, direction)."""
    start = np.datetime64(eval_start.replace(tzinfo=None), "us")
    cases = []
    for sid, (rule, direction) in sorted(rules.items()):
        g = series.filter(pl.col(s.SERIES_ID) == sid).sort(s.TS)
        if g.is_empty():
            raise ValueError(f"no series {sid!r} in the input")
        ts = g[s.TS].dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
        y = g[s.VALUE].fill_null(np.nan).to_numpy().astype(np.float64)
        cases.append(SeriesCase(sid, ts, y, threshold_from_rule(rule, y[ts < start]),
                                direction, start, physical_range(sid)))
    return cases


SMD_METRICS = ("d00_cpu_r", "d05_mem_u", "d12_disk_u")


def smd_cases(folder, metrics=SMD_METRICS, rule: str = "quantile:0.99") -> list[SeriesCase]:
    """CPU, memory and disk of every SMD machine; evaluation starts at its test half."""
    from pathlib import Path

    from features.build import build_series, scan_export

    cases = []
    for path in sorted(Path(folder).glob("*.parquet")):
        if path.name.endswith(".labels.parquet"):
            continue
        lf = scan_export(path, {"host": "node"}).filter(pl.col(s.METRIC).is_in(list(metrics)))
        series = build_series(lf, step="1m", max_fill=3).series.collect()
        labels = pl.read_parquet(path.with_name(path.stem + ".labels.parquet"))
        start = labels.filter(pl.col("split") == "test")[s.TS].min()
        rules = {sid: (rule, "above") for sid in series[s.SERIES_ID].unique()}
        cases += cases_from_series(series, rules, start)
    return cases


def sample_cases(export, eval_days: float = 4.0, step: str = "5m") -> list[SeriesCase]:
    """Every series of the sample export with its catalogue threshold; the last days evaluated."""
    from datetime import timedelta

    from features.build import build_series, scan_export

    series = build_series(scan_export(export), step=step).series.collect()
    start = series[s.TS].max() - timedelta(days=eval_days)
    rules = {}
    for sid in series[s.SERIES_ID].unique().sort():
        spec = s.spec_for(s.split_series_id(sid)[1])
        rules[sid] = (str(spec.threshold), spec.direction)
    return cases_from_series(series, rules, start)


def file_cases(path, rule: str, direction: str, eval_fraction: float = 0.5) -> list[SeriesCase]:
    """A CSV or Parquet of ``timestamp,value`` (one series), evaluated after ``eval_fraction``."""
    from pathlib import Path

    path = Path(path)
    frame = pl.read_csv(path, try_parse_dates=True) if path.suffix == ".csv" else pl.read_parquet(path)
    missing = {"timestamp", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; need timestamp,value")
    ts = frame["timestamp"]
    if ts.dtype == pl.String:
        ts = ts.str.to_datetime(time_zone="UTC")
    elif ts.dtype.is_numeric():
        ts = (ts.cast(pl.Float64) * 1e6).cast(pl.Int64).cast(pl.Datetime("us", "UTC"))
    elif getattr(ts.dtype, "time_zone", None) is None:
        ts = ts.dt.replace_time_zone("UTC")
    frame = pl.DataFrame({s.TS: ts.dt.convert_time_zone("UTC").dt.cast_time_unit("us"),
                          s.VALUE: frame["value"].cast(pl.Float64)}).sort(s.TS)
    step = frame[s.TS].diff().drop_nulls().mode()[0]
    grid = pl.DataFrame({s.TS: pl.datetime_range(frame[s.TS][0], frame[s.TS][-1], step,
                                                  eager=True, time_zone="UTC")})
    frame = grid.join(frame.unique(s.TS, keep="first"), on=s.TS, how="left")
    start = frame[s.TS][int(frame.height * eval_fraction)]
    frame = frame.with_columns(pl.lit(path.stem).alias(s.SERIES_ID))
    return cases_from_series(frame, {path.stem: (rule, direction)}, start)

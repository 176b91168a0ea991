"""Feature tables for anomaly detection: per entity, its metrics side by side with rolling features.

Layout: one row per (entity, ts) on the entity's regular grid (its earliest to latest series
point); per metric the columns ``<metric>``, ``<metric>__mean_<w>``, ``<metric>__std_<w>``,
``<metric>__rate_<w>`` (rate per minute). No look-ahead: every rolling window ends at the current
row and the rate compares with the value one window earlier, so a row never sees a later value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from datetime import timedelta

import polars as pl

from features import schema as s
from features.rollup import step_microseconds

SEP = "__"


def _step_of(series: pl.LazyFrame) -> int:
    step = (series.select(pl.col(s.TS).diff().over(s.SERIES_ID).dt.total_microseconds().min())
            .collect().item())
    if step is None or step <= 0:
        raise ValueError("cannot tell the grid step: give step= (every series has one point)")
    return int(step)


def _window_steps(windows: Sequence[str], step_us: int) -> list[tuple[str, int]]:
    out = []
    for w in windows:
        n = step_microseconds(w) // step_us
        if n < 1 or n * step_us != step_microseconds(w):
            raise ValueError(f"window {w!r} is not a whole number of grid steps")
        out.append((w, n))
    return out


def rolling_exprs(metrics: Sequence[str], windows: Sequence[str], step_us: int,
                  over: str | None = None) -> list[pl.Expr]:
    """Each metric column and its rolling features, in table order, for a frame sorted by time
    (per ``over`` group when several entities share the frame)."""
    exprs = []
    for m in metrics:
        v = pl.col(m)
        exprs.append(v)
        for w, n in _window_steps(windows, step_us):
            feats = [
                v.rolling_mean(n, min_samples=1).alias(f"{m}{SEP}mean_{w}"),
                v.rolling_std(n, min_samples=2).alias(f"{m}{SEP}std_{w}"),
                # shift(n) looks n steps back: the rate never sees a later value
                ((v - v.shift(n)) / (n * step_us / 60e6)).alias(f"{m}{SEP}rate_{w}"),
            ]
            exprs += [f.over(over) for f in feats] if over else feats
    return exprs


def feature_table(series: pl.LazyFrame, windows: Sequence[str] = ("15m", "60m"),
                  step: str | None = None, entity: str | None = None) -> pl.LazyFrame:
    """Wide feature table from a regular series frame (lazy in, lazy out).

    Give ``entity`` to get one workload's or host's table (only its own metrics as columns);
    without it all entities share one frame whose columns are the union of their metrics.
    """
    if entity is not None:
        series = series.filter(pl.col(s.ENTITY) == entity)
    step_us = step_microseconds(step) if step else _step_of(series)
    metrics = sorted(series.select(pl.col(s.METRIC).unique()).collect().to_series().to_list())
    grid = series.group_by(s.ENTITY).agg(
        pl.datetime_ranges(pl.col(s.TS).min(), pl.col(s.TS).max(), timedelta(microseconds=step_us))
        .alias(s.TS)).explode(s.TS)
    wide = series.pivot(on=s.METRIC, on_columns=metrics, index=[s.ENTITY, s.TS], values=s.VALUE,
                        aggregate_function="first")
    return (
        grid.join(wide, on=[s.ENTITY, s.TS], how="left")
        .sort(s.ENTITY, s.TS)
        .select(s.ENTITY, s.TS, *rolling_exprs(metrics, windows, step_us, over=s.ENTITY))
    )


def entity_tables(series: pl.DataFrame, windows: Sequence[str], step: str) -> dict[str, pl.DataFrame]:
    """:func:`iter_entity_tables` as a dict: entity -> its wide feature table."""
    return dict(iter_entity_tables(series, windows, step))


def iter_entity_tables(series: pl.DataFrame, windows: Sequence[str],
                       step: str) -> Iterator[tuple[str, pl.DataFrame]]:
    """:func:`feature_table` for one entity after another, each with only its own metrics.

    Same values as the pivot, assembled by grid position (much faster); ``series`` must be sorted
    by series id and time (as :func:`features.build.run_build` has it).
    """
    step_us = step_microseconds(step)
    _window_steps(windows, step_us)
    long = series.select(
        s.ENTITY, s.METRIC, s.VALUE,
        ((pl.col(s.TS) - pl.col(s.TS).min().over(s.ENTITY)).dt.total_microseconds() // step_us)
        .alias("_pos"),
        pl.col(s.TS).min().over(s.ENTITY).alias("_t0"),
    )
    for (entity,), part in long.partition_by(s.ENTITY, as_dict=True, maintain_order=True).items():
        n = int(part["_pos"].max()) + 1
        t0 = part["_t0"][0]
        step_td = timedelta(microseconds=step_us)
        columns = [pl.repeat(entity, n, dtype=pl.String, eager=True).alias(s.ENTITY),
                   pl.datetime_range(t0, t0 + (n - 1) * step_td, step_td, eager=True).alias(s.TS)]
        metrics = sorted(part[s.METRIC].unique().to_list())
        for (metric,), rows in part.partition_by(s.METRIC, as_dict=True).items():
            columns.append(pl.repeat(None, n, dtype=pl.Float64, eager=True).alias(metric)
                           .scatter(rows["_pos"], rows[s.VALUE]))
        wide = pl.DataFrame(columns)
        yield entity, wide.select(s.ENTITY, s.TS, *rolling_exprs(metrics, windows, step_us))


_PLAIN_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_READABLE_LEN = 40


def table_file_name(entity: str) -> str:
    """The file name of an entity's feature table: injective, at most 72 bytes, portable.

    A short lower-case DNS-style name is used as is (``portal-demo.parquet``); any other name (long,
    upper-case, non-ASCII, with ``/``) becomes a readable ASCII prefix, ``~`` and a hash of the
    whole name. ``~`` never occurs in a plain name, so the two kinds cannot meet, and a
    case-insensitive file system cannot merge two entities.
    """
    if _PLAIN_NAME.fullmatch(entity):
        return f"{entity}.parquet"
    readable = re.sub(r"[^a-z0-9._-]+", "_", entity.lower()).lstrip("._-")[:_READABLE_LEN]
    digest = hashlib.sha256(entity.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}~{digest}.parquet"

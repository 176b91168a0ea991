"""Kept rows -> per-pod buckets (counters as rates) -> workload rollups -> a regular grid per series.

Every aggregation runs over contiguous slices of rows sorted by integer keys, so each sum is
taken in one fixed order: the same input gives the same bits, without a single-threaded engine.
"""

from __future__ import annotations

import re

import polars as pl

from features import schema as s
from features.quarantine import COUNTER, POD_SERIES, SERIES_CODE

BUCKET = "_bucket"  # grid index of a sample: floor(epoch / step)
_SHIFT = pl.lit(1 << 32, pl.UInt64)
_UNITS_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000,
             "d": 86_400_000_000}


def step_microseconds(step: str) -> int:
    """A fixed grid step such as ``1m``, ``5m``, ``30s``, ``1h30m`` in microseconds."""
    parts = re.findall(r"(\d+)(us|ms|s|m|h|d)", step)
    if not parts or "".join(n + u for n, u in parts) != step or step.startswith("0"):
        raise ValueError(f"step {step!r} is not a fixed duration like 30s, 1m, 5m, 1h (units "
                         f"{', '.join(_UNITS_US)})")
    us = sum(int(n) * _UNITS_US[u] for n, u in parts)
    if us <= 0:
        raise ValueError(f"step {step!r} must be positive")
    return us


def _key(high: str) -> pl.Expr:
    """(code, bucket) packed in one integer: buckets counted from the frame's first one."""
    bucket = pl.col(BUCKET)
    return pl.col(high).cast(pl.UInt64) * _SHIFT + (bucket - bucket.min()).cast(pl.UInt64)


def _sorted_key(high: str) -> pl.Expr:
    """:func:`_key` of rows already in key order: group_by then cuts contiguous slices."""
    return _key(high).set_sorted()


def per_pod_buckets(kept: pl.LazyFrame, step: str) -> pl.LazyFrame:
    """One row per pod series and grid bucket: the mean of its samples, or for a counter its
    per-second rate. Counter increases follow Prometheus ``rate()``: a drop is a reset, after
    which the new value is the increase since the reset. ``kept`` must be sorted by pod series
    and time (as :func:`features.quarantine.sort_valid` leaves it)."""
    step_us = step_microseconds(step)
    v, ts = pl.col(s.VALUE), pl.col(s.TS)
    same = pl.col(POD_SERIES) == pl.col(POD_SERIES).shift(1)
    counting = same.fill_null(False) & pl.col(COUNTER)
    prev = v.shift(1)
    bucket = ts.dt.epoch("us") // step_us
    return (
        kept.with_columns(
            pl.when(counting).then(pl.when(v >= prev).then(v - prev).otherwise(v)).alias("_inc"),
            pl.when(counting).then((ts - ts.shift(1)).dt.total_microseconds() / 1e6).alias("_span"),
            bucket.alias(BUCKET),
        )
        .with_columns(_sorted_key(POD_SERIES).alias("_k"))
        .group_by("_k", maintain_order=True)
        .agg(
            pl.col(POD_SERIES).first(), pl.col(SERIES_CODE).first(), pl.col(BUCKET).first(),
            pl.col(COUNTER).first(),
            v.mean().alias("_mean"), pl.col("_inc").sum().alias("_inc"),
            pl.col("_span").sum().alias("_span"),
        )
        .with_columns(
            pl.when(pl.col(COUNTER))
            .then(pl.when(pl.col("_span") > 0).then(pl.col("_inc") / pl.col("_span")))
            .otherwise(pl.col("_mean")).alias(s.VALUE)
        )
        .filter(pl.col(s.VALUE).is_not_null())  # a counter's first sample alone has no rate yet
        .drop("_k", "_mean", "_inc", "_span", COUNTER)
    )


def rollup_rules(labels: pl.LazyFrame) -> pl.LazyFrame:
    """Per series code: its id, entity, metric, primary rollup and whether max/min are kept."""
    has = {r: [k for k, rule in s.KINDS.items() if r in rule.rollups] for r in ("max", "min")}
    return (
        labels.filter(pl.col(SERIES_CODE).is_not_null())
        .group_by(SERIES_CODE)
        .agg(pl.col(s.SERIES_ID, s.ENTITY, s.METRIC, "rollup", "kind").first())
        .with_columns(
            pl.col("kind").is_in(has["max"]).alias("_has_max"),
            pl.col("kind").is_in(has["min"]).alias("_has_min"),
        )
        .sort(SERIES_CODE)
    )


def order_for_rollup(buckets: pl.LazyFrame) -> pl.LazyFrame:
    """Pod buckets ordered by (series, bucket) -- stable, so within one the pods keep pod-series
    order and every sum across pods is taken in one fixed order."""
    return buckets.select(_key(SERIES_CODE).alias("_k"), BUCKET, s.VALUE).sort(
        "_k", maintain_order=True)


def rollup_to_workload(buckets: pl.LazyFrame, rules: pl.LazyFrame, *,
                       ordered: bool = False) -> pl.LazyFrame:
    """Combine pods per series and bucket by the metric's rollup (mean, max, min or sum), plus
    the busiest (``value_max``) and worst (``value_min``) pod where the metric's kind asks.

    ``ordered``: ``buckets`` already went through :func:`order_for_rollup`.
    """
    v = pl.col(s.VALUE)
    frame = buckets if ordered else order_for_rollup(buckets)
    return (
        frame.with_columns(pl.col("_k").set_sorted())
        .group_by("_k", maintain_order=True)
        .agg(
            pl.col(BUCKET).first(),
            v.sum().alias("_sum"), v.max().alias("_max"), v.min().alias("_min"),
            pl.len().cast(pl.UInt32).alias(s.N_PODS),
        )
        .with_columns((pl.col("_k") // _SHIFT).cast(pl.UInt32).alias(SERIES_CODE),
                      (pl.col("_sum") / pl.col(s.N_PODS)).alias("_mean"))
        .join(rules.select(SERIES_CODE, "rollup", "_has_max", "_has_min"), on=SERIES_CODE,
              how="left", maintain_order="left")
        .select(
            SERIES_CODE, BUCKET,
            pl.when(pl.col("rollup") == "sum").then(pl.col("_sum"))
            .when(pl.col("rollup") == "max").then(pl.col("_max"))
            .when(pl.col("rollup") == "min").then(pl.col("_min"))
            .otherwise(pl.col("_mean")).alias(s.VALUE),
            pl.when(pl.col("_has_max")).then(pl.col("_max")).alias(s.VALUE_MAX),
            pl.when(pl.col("_has_min")).then(pl.col("_min")).alias(s.VALUE_MIN),
            s.N_PODS,
        )
    )


def regular_grid(rolled: pl.LazyFrame, rules: pl.LazyFrame, step: str, max_fill: int) -> pl.LazyFrame:
    """Put each series on a complete grid from its first to its last bucket.

    Gaps of at most ``max_fill`` steps are interpolated and flagged ``filled``; longer gaps stay
    null so no model learns from invented data. Output is sorted by series id, then time.
    """
    step_us = step_microseconds(step)
    schema = rolled.collect_schema()

    def complete(frame: pl.DataFrame) -> pl.DataFrame:
        # rows arrive sorted by series and bucket: upsample inserts the missing buckets in place
        if frame.is_empty():  # every row quarantined: an empty series frame, not an error
            return frame
        return frame.upsample(BUCKET, every="1i", group_by=SERIES_CODE, maintain_order=True)

    grid = rolled.map_batches(complete, schema=schema)
    codes = rules.select(SERIES_CODE, s.SERIES_ID, s.ENTITY, s.METRIC, "_has_max", "_has_min")
    missing = pl.col(s.VALUE).is_null()
    run = pl.struct(pl.col(SERIES_CODE), missing).rle_id()
    # each series starts and ends on an observed bucket, so a whole-column interpolation never
    # reaches across two series; columns a series does not carry are masked back to null
    return (
        grid.join(codes, on=SERIES_CODE, how="left", maintain_order="left")
        .with_columns(run.alias("_run"))
        .with_columns(pl.len().over("_run").alias("_run_len"))
        .with_columns(
            (missing & (pl.col("_run_len") <= max_fill)).alias(s.FILLED),
            (missing & (pl.col("_run_len") > max_fill)).alias("_long_gap"),
        )
        .select(
            s.SERIES_ID, s.ENTITY, s.METRIC,
            (pl.col(BUCKET) * step_us).cast(pl.Datetime("us", "UTC")).alias(s.TS),
            *(pl.when(~pl.col("_long_gap") & keep).then(pl.col(c).interpolate()).alias(c)
              for c, keep in ((s.VALUE, pl.lit(True)), (s.VALUE_MAX, pl.col("_has_max")),
                              (s.VALUE_MIN, pl.col("_has_min")))),
            pl.col(s.N_PODS).fill_null(0),
            s.FILLED,
        )
        .select(*s.SERIES_SCHEMA, *s.SERIES_EXTRA_SCHEMA)
    )

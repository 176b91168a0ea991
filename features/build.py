"""The feature job: a Parquet metric export in, validated regular per-workload series out."""

from __future__ import annotations

import glob
import json
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import polars as pl

from features import schema as s

#: pod-name shapes, tried in order; the named group is the workload
POD_PATTERNS = (
    r"^(.+)-\d+-[a-z0-9]{5}$",  # OpenShift DeploymentConfig: <dc>-<deploy number>-<hash>
    r"^(.+)-[a-z0-9]{6,10}-[a-z0-9]{5}$",  # Kubernetes Deployment: <name>-<rs hash>-<pod hash>
    r"^(.+)-\d+$",  # StatefulSet: <name>-<ordinal>
)

REASON = "reason"
ROW = "row_in_export"  # position in the export as read: "first read" is decided by it


@dataclass
class BuildReport:
    """What the job did to every input row: nothing is dropped without being counted here."""

    source: str
    step: str
    rows_read: int = 0
    rows_kept: int = 0
    exact_duplicates_merged: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    series: int = 0
    grid_points: int = 0
    gaps_filled: int = 0
    gaps_left_empty: int = 0

    def summary(self) -> str:
        q = ", ".join(f"{k}={v}" for k, v in sorted(self.quarantined.items())) or "none"
        return (
            f"{self.rows_read} rows read: {self.rows_kept} kept, "
            f"{self.exact_duplicates_merged} exact duplicates merged, quarantined: {q}; "
            f"{self.series} series on a {self.step} grid ({self.grid_points} points, "
            f"{self.gaps_filled} filled, {self.gaps_left_empty} left empty)"
        )


def scan_export(source: str | Path, rename: dict[str, str] | None = None) -> pl.LazyFrame:
    """Scan a Parquet file, folder (hive partitions welcome) or glob into the export schema.

    Missing label columns become null; ``rename`` maps the export's names onto ours
    (e.g. ``{"host": "node"}``). Timestamps may be datetimes, strings or epoch seconds.
    """
    path = Path(source)
    if path.is_dir():
        pattern = str(path / "**" / "*.parquet")
        if not any(path.rglob("*.parquet")):
            raise ValueError(f"{source}: folder holds no .parquet files")
    elif path.exists() or any(ch in str(source) for ch in "*?["):
        pattern = str(source)
    else:
        raise ValueError(f"{source}: no such file or folder")
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else sorted(
        Path(p) for p in glob.glob(pattern, recursive=True))
    for file in files:
        _check_parquet_file(file)
    try:
        lf = pl.scan_parquet(pattern, hive_partitioning=path.is_dir(), missing_columns="insert")
        names = lf.collect_schema().names()
    except Exception as exc:  # polars raises several error types for unreadable files
        raise ValueError(f"{source}: not a readable Parquet export ({exc})") from exc
    if rename:
        lf = lf.rename({k: v for k, v in rename.items() if k in names})
        names = lf.collect_schema().names()
    missing = [c for c in (s.TS, s.METRIC, s.VALUE) if c not in names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; columns present: {names}")
    lf = lf.with_columns(pl.lit(None, pl.String).alias(c) for c in s.LABELS if c not in names)
    return lf.select(
        _as_utc(pl.col(s.TS), lf.collect_schema()[s.TS]).alias(s.TS),
        *(pl.col(c).cast(pl.String) for c in s.LABELS),
        pl.col(s.METRIC).cast(pl.String),
        pl.col(s.VALUE).cast(pl.Float64, strict=False),
    )


def _check_parquet_file(file: Path) -> None:
    """Refuse a file that is not Parquet (no PAR1 footer) by name, before any work starts."""
    with open(file, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() < 12:
            raise ValueError(f"{file}: too short to be a Parquet file ({fh.tell()} bytes)")
        fh.seek(-4, 2)
        if fh.read(4) != b"PAR1":
            raise ValueError(f"{file}: not a Parquet file (no PAR1 footer)")


def _as_utc(ts: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.Datetime):
        ts = ts.dt.replace_time_zone("UTC") if dtype.time_zone is None else ts
        return ts.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if dtype == pl.String:
        return ts.str.to_datetime(strict=False, time_zone="UTC", time_unit="us")
    if dtype.is_numeric():  # epoch seconds
        return (ts.cast(pl.Float64) * 1e6).cast(pl.Int64, strict=False).cast(pl.Datetime("us", "UTC"))
    return pl.lit(None, pl.Datetime("us", "UTC"))


def workload_of(pod: pl.Expr) -> pl.Expr:
    """The persistent workload a pod belongs to, from its name; null when no shape matches."""
    return pl.coalesce(pod.str.extract(p, 1) for p in POD_PATTERNS)


def workload_of_pod(pod: str) -> str | None:
    """:func:`workload_of` for one pod name, for single requests."""
    for pattern in POD_PATTERNS:
        m = re.match(pattern, pod)
        if m:
            return m.group(1)
    return None


def with_entity(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Add the entity a row's series belongs to: its workload for pod metrics, else its node."""
    return lf.with_columns(
        pl.coalesce(pl.col(s.SERVICE), workload_of(pl.col(s.POD)), pl.col(s.NODE)).alias(s.ENTITY)
    )


def _range_table() -> pl.LazyFrame:
    rows = [(m.name, m.lower, m.upper) for m in s.METRICS.values()]
    return pl.LazyFrame(rows, schema=[s.METRIC, "lower", "upper"], orient="row")


def tag_problems(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Add a ``reason`` column: null for a good row, else why the row cannot be used.

    Duplicates (same time, entity, pod, node and metric): among the rows that are otherwise
    valid, the first one read is kept; a later one with another value is quarantined as
    ``duplicate_conflicting_value``, an equal one is merged later and counted.
    """
    key = [s.TS, s.ENTITY, s.POD, s.NODE, s.METRIC]
    v = pl.col(s.VALUE)
    lf = lf.with_row_index(ROW).join(_range_table(), on=s.METRIC, how="left",
                                     maintain_order="left")
    invalid = (
        pl.when(pl.col(s.TS).is_null()).then(pl.lit("unparseable_timestamp"))
        .when(pl.col(s.METRIC).is_null()).then(pl.lit("missing_metric"))
        .when(pl.col(s.ENTITY).is_null()).then(pl.lit("no_workload_or_node"))
        .when(v.is_null() | v.is_nan()).then(pl.lit("missing_or_nan_value"))
        .when(v.is_infinite()).then(pl.lit("infinite_value"))
        .when((v < pl.col("lower")) | (v > pl.col("upper"))).then(pl.lit("out_of_range"))
        .otherwise(pl.lit(None, pl.String))
    )
    valid_key = [*key, pl.col(REASON).is_null()]
    first_value = v.sort_by(ROW).first().over(valid_key)
    later_read = pl.col(ROW).rank("ordinal").over(valid_key) > 1
    conflict = pl.col(REASON).is_null() & later_read & (v != first_value)
    return (
        lf.with_columns(invalid.alias(REASON))
        .with_columns(
            pl.when(conflict).then(pl.lit("duplicate_conflicting_value"))
            .otherwise(pl.col(REASON)).alias(REASON)
        )
        .drop("lower", "upper")
    )


def _ordered_sum(v: pl.Expr) -> pl.Expr:
    """A sum taken strictly in row order: SIMD/chunked sums differ in the last bit between runs."""
    return v.cum_sum().last()


def _ordered_mean(v: pl.Expr) -> pl.Expr:
    return _ordered_sum(v) / v.count()


def rollup_to_workload(lf: pl.LazyFrame, step: str) -> pl.LazyFrame:
    """Bucket each pod's samples onto the step grid, then combine pods per entity by metric rollup.

    Rollups: ``mean``/``max`` across pods for levels, ``sum`` for rates such as TPS.
    """
    per_pod = (
        lf.with_columns(pl.col(s.TS).dt.truncate(step))
        .group_by(s.ENTITY, s.METRIC, s.POD, s.NODE, s.TS, maintain_order=True)
        .agg(_ordered_mean(pl.col(s.VALUE)))
        .sort(s.ENTITY, s.METRIC, s.TS, s.POD, s.NODE)
    )
    rollup = pl.DataFrame(
        [(m.name, m.rollup) for m in s.METRICS.values()], schema=[s.METRIC, "rollup"], orient="row"
    ).lazy()
    v = pl.col(s.VALUE)
    return (
        per_pod.join(rollup, on=s.METRIC, how="left", maintain_order="left")
        .group_by(s.ENTITY, s.METRIC, s.TS, maintain_order=True)
        .agg(
            pl.when(pl.col("rollup").first() == "sum").then(_ordered_sum(v))
            .when(pl.col("rollup").first() == "max").then(v.max())
            .otherwise(_ordered_mean(v)).alias(s.VALUE),
            pl.len().cast(pl.UInt32).alias(s.N_PODS),
        )
    )


def regular_grid(lf: pl.LazyFrame, step: str, max_fill: int) -> pl.LazyFrame:
    """Put each series on a complete grid from its first to its last point.

    Gaps of at most ``max_fill`` steps are interpolated and flagged ``filled``; longer gaps stay
    null so no model learns from invented data.
    """
    bounds = lf.group_by(s.ENTITY, s.METRIC).agg(
        pl.datetime_ranges(pl.col(s.TS).min(), pl.col(s.TS).max(), step).alias(s.TS)
    ).explode(s.TS)
    grid = bounds.join(lf, on=[s.ENTITY, s.METRIC, s.TS], how="left").sort(
        s.ENTITY, s.METRIC, s.TS
    )
    sid = [s.ENTITY, s.METRIC]
    missing = pl.col(s.VALUE).is_null()
    run = (missing != missing.shift(1)).fill_null(True).cum_sum().over(sid)
    run_len = pl.len().over([*sid, "_run"])
    return (
        grid.with_columns(run.alias("_run"))
        .with_columns(
            (missing & (run_len <= max_fill)).alias(s.FILLED),
            (missing & (run_len > max_fill)).alias("_long_gap"),
        )
        .with_columns(
            pl.when(pl.col("_long_gap")).then(None)
            .otherwise(pl.col(s.VALUE).interpolate().over(sid)).alias(s.VALUE),
            pl.col(s.N_PODS).fill_null(0),
        )
        .with_columns(
            pl.concat_str(pl.col(s.ENTITY), pl.lit("/"), pl.col(s.METRIC)).alias(s.SERIES_ID)
        )
        .select(*s.SERIES_SCHEMA)
    )


class BuiltSeries(NamedTuple):
    """The job's lazy outputs: the regular series, the quarantined rows, the rows kept."""

    series: pl.LazyFrame
    quarantine: pl.LazyFrame
    kept: pl.LazyFrame  # valid rows after exact duplicates are merged


def build_series(lf: pl.LazyFrame, step: str = "5m", max_fill: int = 3) -> BuiltSeries:
    """Export rows -> regular series, quarantined rows with a reason, and the rows kept."""
    tagged = tag_problems(with_entity(lf)).cache()
    good = tagged.filter(pl.col(REASON).is_null()).drop(REASON)
    kept = good.unique(subset=[s.TS, s.ENTITY, s.POD, s.NODE, s.METRIC], keep="first",
                       maintain_order=True).sort(ROW).drop(ROW)
    series = regular_grid(rollup_to_workload(kept, step), step, max_fill)
    return BuiltSeries(series, tagged.filter(pl.col(REASON).is_not_null()).sort(ROW), kept)


def run_build(
    source: str | Path,
    out: str | Path,
    step: str = "5m",
    max_fill: int = 3,
    rename: dict[str, str] | None = None,
) -> BuildReport:
    """Run the job and write ``series.parquet``, ``quarantine.parquet`` and ``report.json``.

    The output folder is replaced atomically: a failed run leaves the previous output intact.
    """
    lf = scan_export(source, rename)
    built = build_series(lf, step, max_fill)
    try:
        # the in-memory engine aggregates in a fixed order: the same input gives the same bytes
        n_read, series, quarantine, n_kept = pl.collect_all(
            [lf.select(pl.len()), built.series, built.quarantine, built.kept.select(pl.len())],
            engine="in-memory",
        )
    except pl.exceptions.PolarsError as exc:  # e.g. a corrupt partition found mid-read
        raise ValueError(f"{source}: could not read the export ({exc})") from exc
    rows_read = n_read.item()
    if rows_read == 0:
        raise ValueError(f"{source}: the export holds no rows")
    s.validate(series, s.SERIES_SCHEMA, what="series frame")
    rows_kept = n_kept.item()
    report = BuildReport(
        source=str(source),
        step=step,
        rows_read=rows_read,
        rows_kept=rows_kept,
        exact_duplicates_merged=rows_read - quarantine.height - rows_kept,
        quarantined=dict(quarantine.group_by(REASON).len().sort(REASON).iter_rows()),
        series=series[s.SERIES_ID].n_unique(),
        grid_points=series.height,
        gaps_filled=int(series[s.FILLED].sum()),
        gaps_left_empty=int(series[s.VALUE].is_null().sum()),
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        series.sort(s.SERIES_ID, s.TS).write_parquet(tmp / "series.parquet")
        quarantine.write_parquet(tmp / "quarantine.parquet")
        (tmp / "report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def load_series(path: str | Path) -> pl.DataFrame:
    """Read a series frame written by :func:`run_build` (a file or the job's output folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "series.parquet"
    return s.validate(pl.read_parquet(path), s.SERIES_SCHEMA, what=str(path))

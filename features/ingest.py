"""Reading an export: find its Parquet files, refuse broken ones by name, map columns, times to UTC."""

from __future__ import annotations

import glob
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import polars as pl

from features import schema as s
from features.config import BuildConfig, ExportConfig, check_export

#: epoch counts per second, per unit, in the order a tie between units is decided
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_US_LIMIT = 2**62  # |microseconds| beyond this are clipped: far outside any window, never overflow


def export_files(source: str | Path) -> tuple[list[Path], str, bool]:
    """The Parquet files of a source (file, folder of hive partitions, or glob), in read order.

    Returns the files, the pattern to scan and whether it is a hive folder.
    """
    path = Path(source)
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise ValueError(f"{source}: folder holds no .parquet files")
        return files, str(path / "**" / "*.parquet"), True
    if path.exists():
        return [path], str(path), False
    if any(ch in str(source) for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(source), recursive=True))
        if not files:
            raise ValueError(f"{source}: not a readable Parquet export (the glob matches no file)")
        return files, str(source), False
    raise ValueError(f"{source}: no such file or folder")


def check_parquet_file(file: Path) -> dict[str, pl.DataType]:
    """Refuse a file that is not Parquet (no PAR1 footer) by name; return its schema."""
    with open(file, "rb") as fh:
        fh.seek(0, 2)
        if fh.tell() < 12:
            raise ValueError(f"{file}: too short to be a Parquet file ({fh.tell()} bytes)")
        fh.seek(-4, 2)
        if fh.read(4) != b"PAR1":
            raise ValueError(f"{file}: not a Parquet file (no PAR1 footer)")
    try:
        return dict(pl.read_parquet_schema(file))
    except Exception as exc:  # a damaged footer: polars raises several error types
        raise ValueError(f"{file}: unreadable Parquet metadata ({exc})") from exc


def _check_schemas(source: str | Path, schemas: dict[Path, dict], rename: dict[str, str],
                   export: ExportConfig) -> None:
    """Every file must carry the required columns, and a column must have one type in all files."""
    first: dict[str, tuple[Path, pl.DataType]] = {}
    for file, schema in schemas.items():
        names = {rename.get(c, c): t for c, t in schema.items()}
        required = [s.TS] if export.format == "wide" else [s.TS, s.METRIC, s.VALUE]
        missing = [c for c in required if c not in names]
        if missing:
            raise ValueError(f"{file}: missing column(s) {missing}; columns present: "
                             f"{list(schema)} (source {source})")
        for name, dtype in names.items():
            seen = first.setdefault(name, (file, dtype))
            if seen[1] != dtype and not (seen[1].is_numeric() and dtype.is_numeric()):
                raise ValueError(f"{file}: column {name!r} is {dtype} but {seen[0]} has {seen[1]} "
                                 f"(source {source})")


def _to_us(n: pl.Expr, unit: str, integer: bool) -> pl.Expr:
    """Epoch counts in ``unit`` -> microseconds, clipped so no value can overflow 64 bits."""
    per_s = _PER_SECOND[unit]
    if integer:  # exact: no float rounding of big epochs
        n = n.cast(pl.Int64, strict=False)
        if per_s >= 1_000_000:
            return n // (per_s // 1_000_000)
        limit = _US_LIMIT // (1_000_000 // per_s)
        return n.clip(-limit, limit) * (1_000_000 // per_s)
    us = n.cast(pl.Float64) * (1_000_000 / per_s)
    return us.clip(-float(_US_LIMIT), float(_US_LIMIT)).round(0).cast(pl.Int64, strict=False)


def _unit_index(n: pl.Expr, window: tuple[datetime, datetime]) -> pl.Expr:
    """One unit for the whole column (its index in s, ms, us, ns): the one under which most of
    its numbers fall in ``window``; a tie goes to the coarser unit. Never one unit per value."""
    lo, hi = (t.timestamp() for t in window)
    f = n.cast(pl.Float64)
    votes = [f.is_between(lo * k, hi * k).sum() for k in _PER_SECOND.values()]
    return pl.concat_list(votes).list.arg_max()


def _auto_us(n: pl.Expr, integer: bool, window: tuple[datetime, datetime]) -> pl.Expr:
    """:func:`_to_us` in the unit :func:`_unit_index` picks for the column."""
    pick = _unit_index(n, window)
    out = pl.lit(None, pl.Int64)
    for i, unit in reversed(list(enumerate(_PER_SECOND))):
        out = pl.when(pick == i).then(_to_us(n, unit, integer)).otherwise(out)
    return out


def as_utc(ts: pl.Expr, dtype: pl.DataType, epoch_unit: str = "auto", timezone: str = "UTC",
           window: tuple[datetime, datetime] | None = None) -> pl.Expr:
    """Any timestamp encoding -> ``Datetime('us', 'UTC')``; what cannot be parsed becomes null.

    Naive datetimes and strings are read in ``timezone``; numbers are epochs in ``epoch_unit``
    (``auto``: one unit for the whole column, the one that puts most values in ``window``).
    Numbers too large for any date are clipped far outside every window, never overflowed.
    """
    utc = pl.Datetime("us", "UTC")
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            ts = ts.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
        return ts.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if dtype == pl.Date:
        return ts.cast(pl.Datetime("us")).dt.replace_time_zone(timezone).dt.convert_time_zone("UTC")
    if dtype == pl.String:
        parsed = ts.str.to_datetime(strict=False, time_unit="us", time_zone=timezone)
        return parsed.dt.convert_time_zone("UTC")
    if dtype.is_numeric():
        integer = dtype.is_integer()
        if epoch_unit == "auto":
            return _auto_us(ts, integer, window or BuildConfig().time_window()).cast(utc)
        return _to_us(ts, epoch_unit, integer).cast(utc)
    return pl.lit(None, utc)


class Export(NamedTuple):
    """A scanned export and how its timestamps were read."""

    frame: pl.LazyFrame
    #: the unit numeric timestamps were read in (None for datetimes and strings)
    epoch_unit: str | None
    epoch_unit_detected: bool  # chosen by magnitude (``auto``), not configured


def detect_epoch_unit(source, lf: pl.LazyFrame, window: tuple[datetime, datetime]) -> str:
    """The unit under which most of the export's numeric timestamps fall in ``window``."""
    try:
        pick = lf.select(_unit_index(pl.col(s.TS), window)).collect(engine="streaming").item()
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"{source}: could not read the timestamps ({exc})") from exc
    return list(_PER_SECOND)[pick]


def scan_export(
    source: str | Path,
    rename: dict[str, str] | None = None,
    export: ExportConfig | None = None,
    window: tuple[datetime, datetime] | None = None,
) -> pl.LazyFrame:
    """Scan a Parquet file, folder (hive partitions welcome) or glob into the export schema.

    Long format is canonical; ``export.format == "wide"`` unpivots one column per metric. Missing
    label columns become null; ``rename`` (and ``export.columns``) map the export's names onto
    ours (e.g. ``{"host": "node"}``). Timestamps may be datetimes in any zone, strings or epochs;
    they come out in UTC. Every file is checked first: a broken one is a ``ValueError`` naming it.
    ``window`` is the plausible-time window ``auto`` epochs are fitted to (default: the build's).
    """
    return open_export(source, rename, export, window).frame


def open_export(
    source: str | Path,
    rename: dict[str, str] | None = None,
    export: ExportConfig | None = None,
    window: tuple[datetime, datetime] | None = None,
) -> Export:
    """:func:`scan_export`, also saying which epoch unit numeric timestamps are read in."""
    export = export or ExportConfig()
    check_export(export, str(source))
    rename = {**export.rename(), **(rename or {})}
    files, pattern, hive = export_files(source)
    schemas = {file: check_parquet_file(file) for file in files}
    _check_schemas(source, schemas, rename, export)
    try:
        lf = pl.scan_parquet(pattern, hive_partitioning=hive, missing_columns="insert",
                             cast_options=pl.ScanCastOptions(integer_cast="upcast",
                                                             float_cast="upcast"))
        names = lf.collect_schema().names()
    except Exception as exc:  # polars raises several error types for unreadable files
        raise ValueError(f"{source}: not a readable Parquet export ({exc})") from exc
    lf = lf.rename({k: v for k, v in rename.items() if k in names})
    names = lf.collect_schema().names()
    ts_type = lf.collect_schema().get(s.TS)
    unit = export.epoch_unit if ts_type is not None and ts_type.is_numeric() else None
    if unit == "auto":
        unit = detect_epoch_unit(source, lf, window or BuildConfig().time_window())
    if export.format == "wide":
        lf = _unpivot_wide(source, lf, names, export)
        names = lf.collect_schema().names()
    missing = [c for c in (s.TS, s.METRIC, s.VALUE) if c not in names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; columns present: {names}")
    lf = lf.with_columns(pl.lit(None, pl.String).alias(c) for c in s.LABELS if c not in names)
    frame = lf.select(
        as_utc(pl.col(s.TS), lf.collect_schema()[s.TS], unit or "s", export.timezone).alias(s.TS),
        *(pl.col(c).cast(pl.String) for c in s.LABELS),
        pl.col(s.METRIC).cast(pl.String),
        pl.col(s.VALUE).cast(pl.Float64, strict=False),
    )
    return Export(frame, unit, unit is not None and export.epoch_unit == "auto")


def _unpivot_wide(source, lf: pl.LazyFrame, names: list[str], export: ExportConfig) -> pl.LazyFrame:
    """One column per metric -> long rows; a sample row becomes one row per metric, row-major."""
    index = [c for c in (s.TS, *s.LABELS) if c in names]
    metrics = list(export.metrics) or [c for c in names if c not in index]
    absent = [m for m in metrics if m not in names]
    if absent or not metrics:
        raise ValueError(f"{source}: wide export lacks metric column(s) {absent or '(none found)'}; "
                         f"columns present: {names}")
    row = "_wide_row"
    # unpivot is column-major; sorting back by the export row keeps "first read" meaning first read
    return (
        lf.select(*index, *(pl.col(m).cast(pl.Float64, strict=False) for m in metrics))
        .with_row_index(row)
        .unpivot(on=metrics, index=[row, *index], variable_name=s.METRIC, value_name=s.VALUE)
        .sort(row, maintain_order=True)
        .drop(row)
    )

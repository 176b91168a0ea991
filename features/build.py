"""The feature job: a Parquet metric export in, validated regular per-workload series out.

Stages (each a ``LazyFrame -> LazyFrame`` function in its own module): :mod:`features.ingest`
reads and maps the export, :mod:`features.quarantine` validates rows and resolves duplicates,
:mod:`features.rollup` turns pods into workload series on a regular grid, :mod:`features.tables`
builds the anomaly-detection feature tables. :func:`build_series` composes them lazily for a
notebook; :func:`run_build` runs them stage by stage and writes the output folder atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import polars as pl

from features import schema as s
from features.config import BuildConfig, ExportConfig, load_config
from features.ingest import as_utc, export_files, open_export, scan_export
from features.pods import POD_PATTERNS, entity_of, patterns_with, with_entity, workload_of, workload_of_pod
from features.quarantine import (
    COUNTER,
    LABEL_HASH,
    POD_SERIES,
    REASON,
    REASONS,
    ROW,
    ROWS,
    SERIES_CODE,
    check_label_hashes,
    label_table,
    quarantine_rows,
    resolve_duplicates,
    sort_valid,
    tag_rows,
    with_label_hash,
)
from features.rollup import (
    order_for_rollup,
    per_pod_buckets,
    regular_grid,
    rollup_rules,
    rollup_to_workload,
    step_microseconds,
)
from features.tables import entity_tables, feature_table, iter_entity_tables, table_file_name

__all__ = [
    "POD_PATTERNS", "REASON", "REASONS", "ROW", "BuildConfig", "BuildReport", "BuiltSeries",
    "ExportConfig", "NothingKeptError", "as_utc", "build_pods", "build_series", "entity_of",
    "entity_tables", "feature_table", "load_config", "load_series", "pod_lifetimes", "run_build",
    "scan_export", "table_file_name", "with_entity", "workload_of", "workload_of_pod",
]

MANIFEST_VERSION = 2  # 2: tables/ file names are table_file_name(entity), listed under "tables"
POD_COLUMNS = {"pod": pl.String, "workload": pl.String, "node": pl.String,
               "first_seen": pl.Datetime("us", "UTC"), "last_seen": pl.Datetime("us", "UTC"),
               "n_samples": pl.UInt32}


@dataclass
class BuildReport:
    """What the job did to every input row: nothing is dropped without being counted here.

    ``rows_read == rows_kept + exact_duplicates_merged + sum(quarantined.values())`` always.
    """

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
    pods: int = 0
    counter_resets: int = 0
    feature_tables: int = 0
    epoch_unit: str | None = None  # the unit numeric timestamps were read in; None for others
    epoch_unit_detected: bool = False  # chosen by magnitude (epoch_unit = "auto")

    def quarantine_summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.quarantined.items())) or "none"

    def summary(self) -> str:
        q = self.quarantine_summary()
        unit = (f"; epoch timestamps in {self.epoch_unit}"
                f"{' (detected)' if self.epoch_unit_detected else ''}" if self.epoch_unit else "")
        return (
            f"{self.rows_read} rows read: {self.rows_kept} kept, "
            f"{self.exact_duplicates_merged} exact duplicates merged, quarantined: {q}; "
            f"{self.series} series on a {self.step} grid ({self.grid_points} points, "
            f"{self.gaps_filled} filled, {self.gaps_left_empty} left empty); "
            f"{self.pods} pods, {self.counter_resets} counter resets, "
            f"{self.feature_tables} feature tables{unit}"
        )


class NothingKeptError(ValueError):
    """The export gave no usable row (or no series point): nothing is written, and the previous
    output stays in place. ``report`` says where every row went."""

    def __init__(self, message: str, report: BuildReport):
        super().__init__(message)
        self.report = report


class BuiltSeries(NamedTuple):
    """The job's lazy outputs: the regular series, the quarantined rows, the rows kept."""

    series: pl.LazyFrame
    quarantine: pl.LazyFrame
    kept: pl.LazyFrame  # valid rows after exact duplicates are merged, in read order


class _Plan(NamedTuple):
    labels: pl.LazyFrame
    series: pl.LazyFrame
    quarantine: pl.LazyFrame
    kept_sorted: pl.LazyFrame  # kept rows by pod series and time, with integer codes


def _plan(rows: pl.LazyFrame, labels: pl.LazyFrame, step: str, max_fill: int,
          window: tuple[datetime, datetime] | None = None) -> _Plan:
    tagged = tag_rows(rows, labels, window or BuildConfig().time_window())
    resolved = resolve_duplicates(sort_valid(tagged))
    kept_sorted = resolved.filter(~pl.col("_repeat"))
    rules = rollup_rules(labels)
    series = regular_grid(rollup_to_workload(per_pod_buckets(kept_sorted, step), rules), rules,
                          step, max_fill)
    return _Plan(labels, series, quarantine_rows(tagged, resolved, rows, labels), kept_sorted)


def build_series(lf: pl.LazyFrame, step: str = "5m", max_fill: int = 3,
                 pod_patterns: Sequence[str] = (),
                 window: tuple[datetime, datetime] | None = None) -> BuiltSeries:
    """Export rows -> regular series, quarantined rows with a reason, and the rows kept (lazy).

    Duplicates: among otherwise valid rows of one pod series and instant, the first one read is
    kept; a later one with another value is quarantined, an equal one is merged and counted.
    ``pod_patterns`` are tried before the built-in pod-name shapes. Rows timed outside
    ``window`` (default: 2000-01-01 to now + 1 day) are quarantined as ``time_out_of_range``.
    """
    step_microseconds(step)  # refuse a calendar step before any work
    rows = with_label_hash(lf)
    labels = label_table(rows, patterns_with(pod_patterns))
    plan = _plan(rows, labels, step, max_fill, window)
    kept = (
        plan.kept_sorted.select(ROW)
        .join(rows.select(ROW, s.TS, s.SERVICE, s.POD, s.NODE, s.METRIC, s.VALUE, LABEL_HASH),
              on=ROW, how="inner")
        .join(labels.select(LABEL_HASH, s.ENTITY), on=LABEL_HASH, how="left")
        .sort(ROW)
        .select(s.TS, s.SERVICE, s.POD, s.NODE, s.METRIC, s.VALUE, s.ENTITY)
    )
    return BuiltSeries(plan.series, plan.quarantine, kept)


def build_pods(lf: pl.LazyFrame, pod_patterns: Sequence[str] = (),
               window: tuple[datetime, datetime] | None = None) -> pl.LazyFrame:
    """Pod lifetimes of an export (lazy): what ``pods.parquet`` holds, for a notebook."""
    rows = with_label_hash(lf)
    labels = label_table(rows, patterns_with(pod_patterns))
    return pod_lifetimes(_plan(rows, labels, "1m", 0, window).kept_sorted, labels)


def pod_lifetimes(kept_sorted: pl.LazyFrame, labels: pl.LazyFrame) -> pl.LazyFrame:
    """One row per pod: its workload, node, first and last sample time and sample count, so a
    brand-new pod can be served with its workload's model."""
    per_series = kept_sorted.with_columns(pl.col(POD_SERIES).set_sorted()).group_by(
        POD_SERIES, maintain_order=True).agg(
        pl.col(s.TS).min().alias("first_seen"), pl.col(s.TS).max().alias("last_seen"),
        pl.len().alias("n_samples"),
    )
    names = labels.filter(pl.col(POD_SERIES).is_not_null() & pl.col(s.POD).is_not_null()).group_by(
        POD_SERIES).agg(pl.col(s.POD, s.ENTITY, s.NODE).first())
    return (
        per_series.join(names, on=POD_SERIES, how="inner")
        .group_by(s.POD, s.ENTITY, s.NODE)
        .agg(pl.col("first_seen").min(), pl.col("last_seen").max(), pl.col("n_samples").sum())
        .select(pl.col(s.POD).alias("pod"), pl.col(s.ENTITY).alias("workload"),
                pl.col(s.NODE).alias("node"), "first_seen", "last_seen",
                pl.col("n_samples").cast(pl.UInt32))
        .sort("workload", "pod", "node", nulls_last=True)
    )


def _stderr(message: str) -> None:
    print(f"[features] {message}", file=sys.stderr, flush=True)


class _Stages:
    """Stage-by-stage progress with timings (to stderr by default)."""

    def __init__(self, echo: Callable[[str], None] | None):
        self.echo, self.t0, self.t = echo, time.perf_counter(), time.perf_counter()

    def done(self, what: str) -> None:
        now = time.perf_counter()
        if self.echo:
            self.echo(f"{what} ({now - self.t:.1f} s, {now - self.t0:.1f} s total)")
        self.t = now


def _fingerprint(files: list[Path]) -> dict:
    digests = []
    for file in files:
        h = hashlib.sha256()
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):  # noqa: B023
                h.update(chunk)
        digests.append({"file": file.name, "bytes": file.stat().st_size, "sha256": h.hexdigest()})
    overall = hashlib.sha256("".join(d["sha256"] for d in digests).encode()).hexdigest()
    return {"sha256": overall, "files": digests}


def _versions() -> dict[str, str]:
    out = {"polars": pl.__version__, "python": sys.version.split()[0]}
    try:
        out["prealert"] = metadata.version("prealert")
    except metadata.PackageNotFoundError:
        out["prealert"] = "unknown"
    return out


def _collect(source, frames: list[pl.LazyFrame], engine: str = "in-memory") -> list[pl.DataFrame]:
    """Collect at a stage edge. Aggregations run in-memory (a sorted-key group_by cuts slices, so
    every sum has one order: the same bits every run); scans and stable sorts may stream."""
    try:
        return pl.collect_all(frames, engine=engine)
    except pl.exceptions.PolarsError as exc:  # e.g. a corrupt partition found mid-read
        raise ValueError(f"{source}: could not read the export ({exc})") from exc


#: rows of the export one chunk of the job holds (its memory bound): whole entities, in series order
CHUNK_ROWS = 4_000_000


def chunk_plan(labels: pl.DataFrame, chunk_rows: int = CHUNK_ROWS) -> tuple[pl.DataFrame, int]:
    """Split the export's label sets into chunks of about ``chunk_rows`` rows: ``(label hash ->
    chunk, number of chunks)``.

    A chunk is a run of consecutive series codes (the output's series-id order) that never
    splits an entity (its feature table needs all its series) nor so a pod series or a pod; the
    chunks' outputs put end to end are then the whole job's. Label sets with unusable labels (no
    series code) only give quarantined rows: they are spread over the chunks by their hash.
    """
    usable = labels.filter(pl.col(SERIES_CODE).is_not_null())
    if usable.is_empty():
        return labels.select(LABEL_HASH, pl.lit(0, pl.UInt32).alias(_CHUNK)), 1
    per_series = (
        usable.group_by(SERIES_CODE).agg(pl.col(s.ENTITY).first(), pl.col(ROWS).sum())
        .sort(SERIES_CODE)
        .with_columns(pl.col(SERIES_CODE).max().over(s.ENTITY).alias("_last"))
        # an entity's codes may interleave with another's (an entity id holding "/"): a run
        # ends only where no entity reaches past it
        .with_columns((pl.col("_last").cum_max() == pl.col(SERIES_CODE)).alias("_ends"))
    )
    chunk_of, chunk, filled = [], 0, 0
    for rows, ends in zip(per_series[ROWS].to_list(), per_series["_ends"].to_list(), strict=True):
        chunk_of.append(chunk)
        filled += rows
        if ends and filled >= chunk_rows:
            chunk, filled = chunk + 1, 0
    n_chunks = chunk + (filled > 0)
    codes = per_series.select(SERIES_CODE, pl.Series(_CHUNK, chunk_of, pl.UInt32))
    plan = labels.select(LABEL_HASH, SERIES_CODE).join(codes, on=SERIES_CODE, how="left").select(
        LABEL_HASH,
        pl.coalesce(_CHUNK, (pl.col(LABEL_HASH) % n_chunks).cast(pl.UInt32)).alias(_CHUNK))
    return plan, n_chunks


_CHUNK = "_chunk"
_SLIM = (ROW, s.TS, s.VALUE, LABEL_HASH)  # what a chunk reads back; labels come from the table


class _Part(NamedTuple):
    """One chunk's outputs."""

    series: pl.DataFrame
    quarantine: pl.DataFrame
    pods: pl.DataFrame
    rows_kept: int
    counter_resets: int


def _build_part(source, rows: pl.LazyFrame, labels: pl.DataFrame, rules: pl.LazyFrame,
                window: tuple[datetime, datetime], step: str, max_fill: int, n_codes: int) -> _Part:
    """The job on one chunk's rows (``_SLIM`` columns, read order): whole pod series and
    entities, so every step gives what it gives on the whole export, restricted to them."""
    (tagged,) = _collect(source, [tag_rows(rows, labels.lazy(), window)])
    # the span of usable times only: out-of-window rows are already tagged and set aside
    lo, hi = tagged.filter(pl.col(REASON).is_null()).select(
        pl.col(s.TS).dt.epoch("us").min().alias("lo"), pl.col(s.TS).dt.epoch("us").max().alias("hi")
    ).row(0)
    span = hi - lo + 1 if lo is not None else 1
    # one 64-bit sort key (pod series, time) when it fits, else two stable sorts: same order
    single = span.bit_length() if span.bit_length() + n_codes.bit_length() <= 64 else None
    (ordered,) = _collect(source, [sort_valid(tagged.lazy(), single)], engine="streaming")
    (resolved,) = _collect(source, [resolve_duplicates(ordered.lazy())])
    del ordered
    kept_sorted = resolved.filter(~pl.col("_repeat"))
    # quarantined rows get their labels as read from the label table (one hash, one label set:
    # check_label_hashes saw to it)
    with_labels = rows.join(labels.lazy().select(LABEL_HASH, *_LABEL_KEYS), on=LABEL_HASH, how="left")
    (quarantine,) = _collect(source, [quarantine_rows(tagged.lazy(), resolved.lazy(), with_labels,
                                                      labels.lazy())])
    del tagged, resolved
    kept = kept_sorted.lazy()
    (buckets,) = _collect(source, [per_pod_buckets(kept, step)])
    (buckets,) = _collect(source, [order_for_rollup(buckets.lazy())], engine="streaming")
    series, pods, resets = _collect(source, [
        regular_grid(rollup_to_workload(buckets.lazy(), rules, ordered=True), rules, step, max_fill),
        pod_lifetimes(kept, labels.lazy()),
        kept.select((pl.col(COUNTER) & (pl.col(POD_SERIES) == pl.col(POD_SERIES).shift(1))
                     & (pl.col(s.VALUE) < pl.col(s.VALUE).shift(1))).sum()),
    ])
    s.validate(series, {**s.SERIES_SCHEMA, **s.SERIES_EXTRA_SCHEMA}, what="series frame")
    return _Part(series, quarantine, pods, kept_sorted.height, int(resets.item()))


_LABEL_KEYS = (s.SERVICE, s.POD, s.NODE, s.METRIC)


def run_build(
    source: str | Path,
    out: str | Path,
    step: str = "5m",
    max_fill: int = 3,
    rename: dict[str, str] | None = None,
    *,
    config: BuildConfig | None = None,
    progress: Callable[[str], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> BuildReport:
    """Run the job and write the output folder: ``series.parquet``, ``quarantine.parquet``,
    ``pods.parquet``, ``tables/<entity>.parquet``, ``report.json`` and ``manifest.json``.

    ``config`` describes the export and the feature tables; ``step``/``max_fill`` given here win
    over it. The output folder is replaced atomically: a failed run leaves the previous output
    intact, and the same input gives byte-identical files. ``progress`` receives stage messages
    (the CLI passes a stderr printer).

    Memory is bounded by ``chunk_rows``, not the export: one streaming pass counts the label
    sets, a second splits the rows (only time, value, label hash and read position) into chunks
    of whole entities on disk (:func:`chunk_plan`), and each chunk is validated, rolled up and
    written before the next is read. The outputs are the same for any ``chunk_rows``.

    Rows timed outside the config's window are quarantined before any grid is built. A run that
    keeps no row (or builds no series point) raises :class:`NothingKeptError` and writes nothing.
    Temporary folders a killed run of this job left beside ``out`` are removed first.
    """
    config = replace(config or BuildConfig(), step=step, max_fill=max_fill)
    step_microseconds(step)
    window = config.time_window()
    stages = _Stages(progress)
    _AtomicFolder(Path(out)).remove_stale()
    export = open_export(source, rename, config.export, window)
    rows = with_label_hash(export.frame)
    (labels,) = _collect(source, [label_table(rows, patterns_with(config.export.pod_patterns))],
                         engine="streaming")
    rows_read = int(labels[ROWS].sum())
    if rows_read == 0:
        raise ValueError(f"{source}: the export holds no rows")
    check_label_hashes(labels)
    n_codes = int(labels[POD_SERIES].max() or 0) + 1
    plan, n_chunks = chunk_plan(labels, chunk_rows)
    stages.done(f"read {rows_read:,} rows from {source}: {labels.height:,} label sets, "
                f"{n_chunks} chunk(s)")
    rules = rollup_rules(labels.lazy()).collect().lazy()

    report = BuildReport(source=str(source), step=step, rows_read=rows_read,
                         epoch_unit=export.epoch_unit, epoch_unit_detected=export.epoch_unit_detected)
    quarantined: dict[str, int] = {}
    pods, quarantine_parts, n_series, tables = [], [], 0, {}  # tables: file -> entity
    with _AtomicFolder(Path(out)) as tmp:
        spill = tmp / ".chunks"
        if n_chunks > 1:
            try:
                rows.select(*_SLIM).join(plan.lazy(), on=LABEL_HASH, how="left").sink_parquet(
                    pl.PartitionBy(spill, key=_CHUNK, include_key=False), engine="streaming",
                    compression="lz4", mkdir=True)
            except pl.exceptions.PolarsError as exc:
                raise ValueError(f"{source}: could not read the export ({exc})") from exc
            stages.done(f"split the rows into {n_chunks} chunks")
        series_out = _SeriesWriter(tmp / "series.parquet")
        if config.tables:
            (tmp / "tables").mkdir()
        for chunk in range(n_chunks):
            part_rows = (rows.select(*_SLIM) if n_chunks == 1 else
                         pl.scan_parquet(spill / f"{_CHUNK}={chunk}" / "*.parquet",
                                         hive_partitioning=False).sort(ROW))
            if n_chunks == 1:
                (slim,) = _collect(source, [part_rows], engine="streaming")
                part_rows = slim.lazy()
            part = _build_part(source, part_rows, labels, rules, window, step, max_fill, n_codes)
            report.rows_kept += part.rows_kept
            report.counter_resets += part.counter_resets
            for reason, n in part.quarantine.group_by(REASON).len().iter_rows():
                quarantined[reason] = quarantined.get(reason, 0) + n
            quarantine_parts.append(tmp / f".quarantine-{chunk:06d}.parquet")
            part.quarantine.write_parquet(quarantine_parts[-1])
            pods.append(part.pods)
            series = part.series
            n_series += series[s.SERIES_ID].n_unique()
            report.grid_points += series.height
            report.gaps_filled += int(series[s.FILLED].sum())
            report.gaps_left_empty += int(series[s.VALUE].is_null().sum())
            series_out.write(series)
            if config.tables:  # one table at a time: only one is ever held in memory
                for entity, table in iter_entity_tables(series, config.windows, step):
                    name = f"tables/{table_file_name(entity)}"
                    if name in tables:  # two entities sharing a 64-bit name hash: refuse, loudly
                        raise RuntimeError(f"feature-table name clash for {entity!r} and "
                                           f"{tables[name]!r}: report this bug")
                    tables[name] = entity
                    # lz4: the tables are large, derived and rebuilt each run; it writes twice as fast
                    table.write_parquet(tmp / name, compression="lz4")
                    report.feature_tables += 1
            del part, series
            if n_chunks > 1:
                shutil.rmtree(spill / f"{_CHUNK}={chunk}", ignore_errors=True)
                stages.done(f"chunk {chunk + 1}/{n_chunks}: {n_series:,} series so far")
        series_out.close()
        shutil.rmtree(spill, ignore_errors=True)
        report.series = n_series
        report.quarantined = dict(sorted(quarantined.items()))
        report.exact_duplicates_merged = (rows_read - report.rows_kept
                                          - sum(report.quarantined.values()))
        pods_frame = (pl.concat(pods) if pods else pl.DataFrame(schema=POD_COLUMNS)).sort(
            "workload", "pod", "node", nulls_last=True)
        report.pods = pods_frame.height
        if report.grid_points == 0:  # the folder is discarded: the previous output stays
            raise NothingKeptError(_nothing_kept(source, out, report, window), report)
        stages.done(f"rolled up {report.series:,} series on a {step} grid "
                    f"({report.grid_points:,} points): {report.rows_kept:,} rows kept, "
                    f"{sum(report.quarantined.values()):,} quarantined")
        pl.scan_parquet(quarantine_parts).sort(ROW).sink_parquet(tmp / "quarantine.parquet")
        for file in quarantine_parts:
            file.unlink()
        pods_frame.write_parquet(tmp / "pods.parquet")
        stages.done("wrote series, quarantine and pods"
                    + (f"; built {report.feature_tables} feature tables "
                       f"({', '.join(config.windows)} windows)" if config.tables else ""))
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "source": str(source),
            "input": _fingerprint(export_files(source)[0]),
            "config": config.as_dict(),
            "counts": asdict(report),
            "versions": _versions(),
            "outputs": sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*.parquet")),
            "tables": dict(sorted(tables.items())),
        }
        for name, doc in (("report.json", asdict(report)), ("manifest.json", manifest)):
            (tmp / name).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    stages.done(f"wrote {out}")
    return report


class _SeriesWriter:
    """``series.parquet`` written a chunk at a time (row groups of at most 2^18 rows, zstd, as
    Polars writes a whole frame), opened at the first chunk."""

    ROW_GROUP = 1 << 18

    def __init__(self, path: Path):
        self.path, self.writer = path, None

    def write(self, frame: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = frame.to_arrow()
        if self.writer is None:  # dictionaries for the label strings only: random floats gain
            # nothing from one, and building it cost half the write
            strings = [c for c, dtype in frame.schema.items() if dtype == pl.String]
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd",
                                           use_dictionary=strings)
        self.writer.write_table(table, row_group_size=self.ROW_GROUP)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _nothing_kept(source, out, report: BuildReport, window: tuple[datetime, datetime]) -> str:
    """One line: why nothing usable came out, and what to change."""
    if report.rows_kept:
        what = (f"{report.rows_kept} of {report.rows_read} rows kept but no series point built "
                f"(a counter needs two samples of a pod for a rate)")
    else:
        what = f"no row kept of {report.rows_read} read"
    hints = []
    if "time_out_of_range" in report.quarantined:
        lo, hi = (t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in window)
        hint = f"times must fall in {lo} .. {hi} (--min-time/--max-time)"
        if report.epoch_unit:
            how = "detected" if report.epoch_unit_detected else "configured; 'auto' detects it"
            hint += f"; numeric times were read as epoch {report.epoch_unit} ({how})"
        hints.append(hint)
    return (f"{source}: {what} (quarantined: {report.quarantine_summary()}); "
            f"{'; '.join(hints) + '; ' if hints else ''}nothing written, {out} left as it was")


class _AtomicFolder:
    """Write into a temporary sibling folder; on success swap it in with renames, on any
    failure remove it: a retried or interrupted job never leaves half an output.

    Temporary folders are named ``.<out>.tmp-<host>-<pid>-<random>``, so one a killed run left
    behind is recognised (by the name, this host and a dead pid) and removed by the next run; a
    run on another host sharing the folder is never touched.
    """

    def __init__(self, out: Path):
        self.out = out
        self.old = out.with_name(f".{out.name}.old")
        host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
        self.prefix = f".{out.name}.tmp-{host}-"
        self.stale = re.compile(rf"{re.escape(self.prefix)}(\d+)-[A-Za-z0-9_]+")

    def remove_stale(self) -> list[Path]:
        """Remove this output's temporary folders whose run is dead; put back an output a run
        killed mid-swap had moved aside. Returns what was removed."""
        if not self.out.parent.is_dir():
            return []
        removed = []
        for path in sorted(self.out.parent.iterdir()):
            m = self.stale.fullmatch(path.name)
            if m and path.is_dir() and not path.is_symlink() and not _alive(int(m.group(1))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        if self.old.is_dir() and not self.old.is_symlink():
            if self.out.exists():
                shutil.rmtree(self.old, ignore_errors=True)
                removed.append(self.old)
            else:  # killed between the two renames: the previous output is the .old folder
                self.old.rename(self.out)
        return removed

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}{os.getpid()}-", dir=self.out.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            if self.out.exists():
                shutil.rmtree(self.old, ignore_errors=True)
                self.out.rename(self.old)
                self.tmp.rename(self.out)
                shutil.rmtree(self.old)
            else:
                self.tmp.rename(self.out)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a reused id counts as alive: safe)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, OSError):  # not ours to signal, or not a valid id: leave it
        return True
    return True


def load_series(path: str | Path) -> pl.DataFrame:
    """Read a series frame written by :func:`run_build` (a file or the job's output folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "series.parquet"
    return s.validate(pl.read_parquet(path), s.SERIES_SCHEMA, what=str(path))

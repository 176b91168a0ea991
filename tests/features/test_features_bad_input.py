"""Inputs that must not hurt the feature job: absurd times, unknown epoch units, odd labels, empty
results and what a killed run leaves behind (issue 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from test_features_pipeline import accounted, digest
from typer.testing import CliRunner

from features import build as b
from features import schema as s
from features.config import BuildConfig, ExportConfig, load_config

T0 = datetime(2026, 9, 21, 10, 0, tzinfo=UTC)
GOOD = [T0 + timedelta(minutes=i) for i in range(3)]
SECONDS = [int(t.timestamp()) for t in GOOD]


def frame(ts: list, service: str | list | None = "svc", metric: str | None = "cpu_pct",
          value: float = 1.0, dtype: pl.DataType | None = None) -> pl.DataFrame:
    """A long export with one service label; ``ts`` in whatever encoding is under test."""
    n = len(ts)
    return pl.DataFrame(
        {s.TS: ts, s.SERVICE: service if isinstance(service, list) else [service] * n,
         s.METRIC: [metric] * n, s.VALUE: [value] * n},
        schema_overrides={s.TS: dtype} if dtype else {s.SERVICE: pl.String, s.METRIC: pl.String})


def cli(*args: str):
    from serving.cli import app

    return CliRunner().invoke(app, ["features", "build", "--quiet", *args], env={})


# --- times outside the plausible window -------------------------------------------------------

ABSURD_TIMES = {
    "datetime-year-1-and-9999": frame(
        GOOD + [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)]),
    "string-year-1-and-9999": frame(
        [f"{t:%Y-%m-%dT%H:%M:%S}" for t in GOOD] + ["0001-01-01T00:00:00", "9999-12-31T23:59:59"]),
    "date-year-1-and-9999": frame(GOOD, service="svc").vstack(frame(  # Date casts into Datetime
        [date(1, 1, 1), date(9999, 12, 31)], dtype=pl.Date).with_columns(
        pl.col(s.TS).cast(pl.Datetime("us", "UTC")))),
    "epoch-0-seconds": frame(SECONDS + [0, SECONDS[0] - 30 * 365 * 86400]),
    "datetime-epoch-0": frame(GOOD + [datetime(1970, 1, 1, tzinfo=UTC), datetime(1999, 12, 31, tzinfo=UTC)]),
    "epoch-beyond-int64-microseconds": frame(SECONDS + [2**63 - 1, -(2**63)]),
    "float-epoch-huge-and-tiny": frame([float(x) for x in SECONDS] + [1e300, -1e300]),
}


@pytest.mark.parametrize("name", list(ABSURD_TIMES))
def test_absurd_times_are_quarantined_before_any_grid(write_export, tmp_path, name):
    source = write_export(ABSURD_TIMES[name])
    started = time.perf_counter()
    report = b.run_build(source, tmp_path / "out", step="1m")
    assert time.perf_counter() - started < 30  # unbounded, this took minutes and 22 GB
    assert report.quarantined == {"time_out_of_range": 2} and accounted(report)
    assert report.grid_points == 3  # the grid covers the three plausible minutes, nothing else
    series = b.load_series(tmp_path / "out")
    assert series[s.TS].to_list() == GOOD
    q = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert q[b.REASON].to_list() == ["time_out_of_range"] * 2
    assert q[s.TS].dt.year().is_between(2000, 2026).not_().all()  # the times as read, kept


def test_the_lazy_path_quarantines_absurd_times_too():
    rows = ABSURD_TIMES["datetime-year-1-and-9999"].with_columns(
        pl.lit(None, pl.String).alias(s.POD), pl.lit(None, pl.String).alias(s.NODE))
    built = b.build_series(rows.lazy(), step="1m")
    assert built.series.collect().height == 3
    assert built.quarantine.collect()[b.REASON].to_list() == ["time_out_of_range"] * 2


def test_the_window_is_configurable_in_toml_and_on_the_cli(write_export, tmp_path):
    source = write_export(frame(GOOD))
    cfg_file = tmp_path / "w.toml"
    cfg_file.write_text('[build]\nstep = "1m"\nmin_time = 2026-09-21T10:01:00Z\n'
                        'max_time = "2026-09-21T10:01:30"\n')
    cfg = load_config(cfg_file, env={})
    assert cfg.time_window() == (GOOD[1], GOOD[1] + timedelta(seconds=30))
    report = b.run_build(source, tmp_path / "out", step="1m", config=cfg)
    assert report.quarantined == {"time_out_of_range": 2} and report.rows_kept == 1

    result = cli("--input", str(source), "--out", str(tmp_path / "cli"), "--step", "1m",
                 "--max-time", "2026-09-21 10:01")
    assert result.exit_code == 0, result.output
    assert "time_out_of_range=1" in result.output


def test_the_default_window_is_2000_to_tomorrow():
    now = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)
    assert BuildConfig().time_window(now) == (datetime(2000, 1, 1, tzinfo=UTC),
                                              now + timedelta(days=1))


@pytest.mark.parametrize(("text", "phrase"), [
    ('[build]\nmin_time = "last tuesday"\n', "ISO 8601"),
    ("[build]\nmin_time = 2026-01-01\nmax_time = 2025-01-01\n", "must be before"),
])
def test_a_bad_window_is_refused_with_a_clear_message(tmp_path, text, phrase):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=phrase):
        load_config(path, env={})


# --- epoch units ------------------------------------------------------------------------------

PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


@pytest.mark.parametrize("kind", ["int", "float"])
@pytest.mark.parametrize("unit", list(PER_SECOND))
def test_epoch_units_are_detected_per_column(write_export, tmp_path, unit, kind):
    ts = [x * PER_SECOND[unit] for x in SECONDS]
    source = write_export(frame([float(x) for x in ts] if kind == "float" else ts))
    report = b.run_build(source, tmp_path / "out", step="1m")  # the default config: auto
    assert (report.epoch_unit, report.epoch_unit_detected) == (unit, True)
    assert report.rows_kept == 3
    assert b.load_series(tmp_path / "out")[s.TS].to_list() == GOOD
    assert json.loads((tmp_path / "out" / "report.json").read_text())["epoch_unit"] == unit


def test_a_configured_unit_is_honoured(write_export, tmp_path):
    source = write_export(frame([x * 1000 for x in SECONDS]))
    cfg = BuildConfig(export=ExportConfig(epoch_unit="ms"))
    report = b.run_build(source, tmp_path / "out", step="1m", config=cfg)
    assert (report.epoch_unit, report.epoch_unit_detected, report.rows_kept) == ("ms", False, 3)


def test_a_value_of_another_unit_in_a_column_is_quarantined(write_export, tmp_path):
    source = write_export(frame([x * 1000 for x in SECONDS] + [SECONDS[0]]))  # one row in s
    report = b.run_build(source, tmp_path / "out", step="1m")
    assert report.epoch_unit == "ms" and report.quarantined == {"time_out_of_range": 1}


def test_a_wrong_configured_unit_is_a_clear_error_not_a_traceback(write_export, tmp_path):
    source = write_export(frame([x * 10**9 for x in SECONDS]))  # ns read as s overflowed before
    cfg = BuildConfig(export=ExportConfig(epoch_unit="s"))
    with pytest.raises(b.NothingKeptError, match=r"read as epoch s \(configured"):
        b.run_build(source, tmp_path / "out", step="1m", config=cfg)


def test_cli_reports_the_detected_unit_and_refuses_a_wrong_one(write_export, tmp_path):
    source = write_export(frame([x * 1000 for x in SECONDS]))
    ok = cli("--input", str(source), "--out", str(tmp_path / "out"), "--step", "1m")
    assert ok.exit_code == 0, ok.output
    assert "epoch timestamps in ms (detected)" in ok.output
    before = digest(tmp_path / "out")

    bad = cli("--input", str(source), "--out", str(tmp_path / "out"), "--epoch-unit", "s")
    assert bad.exit_code == 2
    lines = bad.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "epoch s" in lines[0]
    assert "Traceback" not in bad.output
    assert digest(tmp_path / "out") == before

    odd = cli("--input", str(source), "--out", str(tmp_path / "out"), "--epoch-unit", "days")
    assert odd.exit_code == 2 and "epoch_unit must be one of" in odd.output


# --- a run that keeps nothing -----------------------------------------------------------------

NOTHING_KEPT = {
    "all-nan": frame(GOOD, value=float("nan")),
    "all-unparseable": frame(["not a time"] * 3),
    "all-unknown-pod": frame(GOOD, service=None).with_columns(pl.lit("nginx").alias(s.POD)),
    "all-missing-metric": frame(GOOD, metric=None),
    "all-out-of-range": frame(GOOD, value=150.0),  # a percentage
    "all-year-1": frame([datetime(1, 1, 1, tzinfo=UTC)] * 2),
    "one-counter-sample": frame(GOOD[:1], metric="requests_total"),  # kept, but no rate yet
}


@pytest.mark.parametrize("name", list(NOTHING_KEPT))
def test_a_run_that_keeps_nothing_fails_and_leaves_the_output(write_export, tmp_path, name):
    out = tmp_path / "out"
    b.run_build(write_export(frame(GOOD), "good.parquet"), out, step="1m")
    before = digest(out)
    with pytest.raises(b.NothingKeptError, match="nothing written") as err:
        b.run_build(write_export(NOTHING_KEPT[name]), out, step="1m")
    assert isinstance(err.value, ValueError) and accounted(err.value.report)
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.parquet", "good.parquet", "out"]


def test_cli_exits_non_zero_on_nothing_kept_with_one_line(write_export, tmp_path):
    out = tmp_path / "out"
    assert cli("--input", str(write_export(frame(GOOD), "good.parquet")), "--out", str(out)).exit_code == 0
    before = digest(out)
    result = cli("--input", str(write_export(NOTHING_KEPT["all-nan"])), "--out", str(out))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'export.parquet'}: no row kept of 3 read (quarantined: "
        f"missing_or_nan_value=3); nothing written, {out} left as it was"]
    assert digest(out) == before


# --- long and odd labels ----------------------------------------------------------------------

ODD_NAMES = ["결제", "주문", "s" * 300, "결" * 300, "Web", "web", "a/b", "a_b", "..", "%2F",
             "\u00e9", "e\u0301"]  # é composed and decomposed: two label strings, two files


def test_table_file_names_are_injective_short_and_safe():
    names = [b.table_file_name(e) for e in ODD_NAMES]
    assert len(set(names)) == len(ODD_NAMES)
    assert len({n.lower() for n in names}) == len(names)  # also on a case-insensitive disk
    for name in names:
        assert len(name.encode()) <= 72 and name.isascii() and "/" not in name
        assert not name.startswith(".") and name.endswith(".parquet")
    assert b.table_file_name("portal-demo") == "portal-demo.parquet"  # plain names stay plain


def test_long_and_korean_service_names_get_their_own_tables(write_export, tmp_path):
    services = ["결제", "주문", "s" * 300]
    export = pl.concat([frame(GOOD, service=svc) for svc in services])
    out = tmp_path / "out"
    report = b.run_build(write_export(export), out, step="1m")
    assert report.feature_tables == 3
    tables = json.loads((out / "manifest.json").read_text())["tables"]
    assert sorted(tables.values()) == sorted(services)
    for file, entity in tables.items():
        assert pl.read_parquet(out / file)[s.ENTITY].unique().to_list() == [entity]
    assert len(list((out / "tables").iterdir())) == 3


# --- what a killed run leaves behind ----------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_runs_temp_folders_are_removed_by_the_next_run(write_export, tmp_path):
    out = tmp_path / "out"
    prefix = b._AtomicFolder(out).prefix
    stale = tmp_path / f"{prefix}{dead_pid()}-k1ll3d"
    running = tmp_path / f"{prefix}{os.getpid()}-l1ve"  # a live run of this job: not touched
    unrelated = [tmp_path / ".out.backup", tmp_path / ".other.tmp-x-1-abc",
                 tmp_path / f"{prefix}notapid-x"]
    for folder in (stale, running, *unrelated):
        folder.mkdir()
        (folder / "series.parquet").write_bytes(b"half written")
    b.run_build(write_export(frame(GOOD)), out, step="1m")
    assert not stale.exists()
    assert running.exists() and all(f.exists() for f in unrelated)


def test_an_output_moved_aside_by_a_killed_swap_is_put_back(write_export, tmp_path):
    out = tmp_path / "out"
    b.run_build(write_export(frame(GOOD), "good.parquet"), out, step="1m")
    before = digest(out)
    out.rename(tmp_path / ".out.old")  # killed between the two renames of the swap
    with pytest.raises(b.NothingKeptError):
        b.run_build(write_export(NOTHING_KEPT["all-nan"]), out, step="1m")
    assert digest(out) == before
    assert not (tmp_path / ".out.old").exists()

"""Unit and data-contract tests for the series schema, its validator and the metric catalogue."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import polars as pl
import pytest

from features import schema as s

T0 = datetime(2026, 9, 21, 10, 0, tzinfo=UTC)


def good_export(**overrides: pl.Series) -> pl.DataFrame:
    """A two-row frame that satisfies EXPORT_SCHEMA; ``overrides`` replace or add columns."""
    frame = pl.DataFrame(
        {
            s.TS: pl.Series([T0, T0], dtype=pl.Datetime("us", "UTC")),
            s.SERVICE: pl.Series([None, None], dtype=pl.String),
            s.POD: ["portal-demo-19-2xfkl", "portal-demo-19-abcde"],
            s.NODE: ["worker-1", "worker-2"],
            s.METRIC: ["cpu_pct", "cpu_pct"],
            s.VALUE: [12.5, 40.0],
        }
    )
    return frame.with_columns(**overrides) if overrides else frame


# --- validate ---------------------------------------------------------------------------------


def test_validate_accepts_a_good_frame_with_extra_columns_and_returns_it():
    frame = good_export(extra=pl.lit("anything"), another=pl.lit(1))
    assert s.validate(frame, s.EXPORT_SCHEMA, what="export") is frame


def test_validate_accepts_a_lazyframe_without_collecting_it():
    def explode(_: pl.Series) -> pl.Series:
        raise AssertionError("validate must only read the schema, not the data")

    lf = good_export().lazy().with_columns(
        pl.col(s.VALUE).map_batches(explode, return_dtype=pl.Float64)
    )
    assert s.validate(lf, s.EXPORT_SCHEMA, what="export") is lf


def test_validate_rejects_a_lazyframe_with_a_problem():
    lf = good_export().lazy().drop(s.METRIC)
    with pytest.raises(ValueError, match="missing column 'metric'"):
        s.validate(lf, s.EXPORT_SCHEMA, what="export")


def test_validate_rejects_a_missing_column_and_names_it_and_the_frame():
    with pytest.raises(ValueError) as err:
        s.validate(good_export().drop(s.VALUE), s.EXPORT_SCHEMA, what="pod export")
    msg = str(err.value)
    assert msg.startswith("pod export:")
    assert "missing column 'value'" in msg
    assert "'ts'" not in msg  # only the problem column is named


@pytest.mark.parametrize(
    ("column", "bad"),
    [
        (s.VALUE, pl.col(s.VALUE).cast(pl.Int64)),
        (s.VALUE, pl.col(s.VALUE).cast(pl.Float32)),
        (s.METRIC, pl.col(s.METRIC).cast(pl.Categorical)),
        (s.TS, pl.col(s.TS).dt.strftime("%Y-%m-%dT%H:%M:%S")),  # a string, not a datetime
        (s.TS, pl.col(s.TS).dt.replace_time_zone(None)),  # naive
        (s.TS, pl.col(s.TS).dt.convert_time_zone("Asia/Seoul")),  # same instant, other zone
        (s.TS, pl.col(s.TS).dt.cast_time_unit("ns")),
        (s.TS, pl.col(s.TS).dt.cast_time_unit("ms")),
    ],
    ids=["int-value", "f32-value", "categorical-metric", "string-ts", "naive-ts", "seoul-ts",
         "ns-ts", "ms-ts"],
)
def test_validate_rejects_a_wrong_dtype_and_names_column_actual_and_expected(column, bad):
    frame = good_export().with_columns(bad.alias(column))
    actual = frame.schema[column]
    with pytest.raises(ValueError) as err:
        s.validate(frame, s.EXPORT_SCHEMA, what="export")
    msg = str(err.value)
    assert f"column {column!r} is {actual}, expected {s.EXPORT_SCHEMA[column]}" in msg


def test_validate_reports_every_problem_in_one_error():
    frame = good_export(
        ts=pl.col(s.TS).dt.replace_time_zone(None), value=pl.col(s.VALUE).cast(pl.Int32)
    ).drop(s.METRIC, s.NODE)
    with pytest.raises(ValueError) as err:
        s.validate(frame, s.EXPORT_SCHEMA, what="export")
    msg = str(err.value)
    for needle in ("column 'ts' is", "column 'value' is", "missing column 'metric'",
                   "missing column 'node'"):
        assert needle in msg, msg
    assert msg.count(";") == 3  # four problems, one message
    for fine in ("'service'", "'pod'"):
        assert fine not in msg


def test_validate_series_schema_checks_n_pods_and_filled_types():
    series = pl.DataFrame(
        {
            s.SERIES_ID: ["portal-demo/cpu_pct"],
            s.ENTITY: ["portal-demo"],
            s.METRIC: ["cpu_pct"],
            s.TS: pl.Series([T0], dtype=pl.Datetime("us", "UTC")),
            s.VALUE: [1.0],
            s.N_PODS: pl.Series([2], dtype=pl.UInt32),
            s.FILLED: [False],
        }
    )
    assert s.validate(series, s.SERIES_SCHEMA, what="series") is series
    bad = series.with_columns(pl.col(s.N_PODS).cast(pl.Int64), pl.col(s.FILLED).cast(pl.Int8))
    with pytest.raises(ValueError, match=r"'n_pods'.*'filled'"):
        s.validate(bad, s.SERIES_SCHEMA, what="series")


def test_validate_rejects_an_empty_frame_with_no_columns():
    with pytest.raises(ValueError) as err:
        s.validate(pl.DataFrame(), s.EXPORT_SCHEMA, what="export")
    assert all(f"missing column {c!r}" in str(err.value) for c in s.EXPORT_SCHEMA)


# --- series ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entity", "metric"),
    [
        ("portal-demo", "jvm_heap_pct"),
        ("worker-1.example.internal", "disk_pct"),
        ("ns/portal-demo", "cpu_pct"),  # a slash in the entity still splits on the last one
        ("machine-1-1", "m0"),
    ],
)
def test_series_id_round_trips(entity, metric):
    sid = s.series_id(entity, metric)
    assert sid == f"{entity}/{metric}"
    assert s.split_series_id(sid) == (entity, metric)


@pytest.mark.parametrize("sid", ["", "portal-demo", "/cpu_pct", "portal-demo/", "/"])
def test_split_series_id_rejects_malformed_ids(sid):
    with pytest.raises(ValueError, match="is not of the form"):
        s.split_series_id(sid)


# --- metric catalogue -------------------------------------------------------------------------


def test_spec_for_a_known_metric_is_the_catalogue_entry():
    heap = s.spec_for("jvm_heap_pct")
    assert heap is s.METRICS["jvm_heap_pct"]
    assert (heap.unit, heap.level, heap.rollup, heap.direction) == ("%", "pod", "mean", "above")
    assert (heap.lower, heap.upper, heap.threshold) == (0, 100, 90.0)
    assert s.spec_for("tps").rollup == "sum"
    assert s.spec_for("disk_pct").rollup == "max"
    assert s.spec_for("disk_pct").level == "node"
    assert s.spec_for("apdex").direction == "below"
    assert s.spec_for("apdex").upper == 1


def test_spec_for_an_unknown_metric_is_a_permissive_mean():
    spec = s.spec_for("m17")
    assert spec.name == "m17"
    assert spec.rollup == "mean"
    assert spec.level == "pod"
    assert spec.lower == -math.inf and spec.upper == math.inf
    assert math.isnan(spec.threshold)
    assert "m17" not in s.METRICS  # asking must not grow the catalogue


def test_catalogue_is_consistent():
    for name, spec in s.METRICS.items():
        assert spec.name == name
        assert spec.lower < spec.upper
        assert spec.lower <= spec.threshold <= spec.upper
        assert spec.rollup in ("mean", "max", "sum")
        assert spec.direction in ("above", "below")
        if spec.unit == "%":
            assert (spec.lower, spec.upper) == (0, 100)

"""The feature job in chunks of whole entities gives the same outputs as in one piece."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features import build as b
from features import schema as s

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 9, 21, tzinfo=UTC)


def dirty_export(rng: np.random.Generator, folder: Path) -> Path:
    """Three files of 1-minute rows: workloads with several pods (one shape each), node metrics,
    a counter with resets, entity ids holding "/" (their series interleave with another
    entity's in series-id order), exact and conflicting duplicates read in later files, and
    rows quarantined for every label, value and time reason."""
    rows = []
    entities = [("svc", None), ("svc/d", None), ("svc-b", None), (None, "portal-1-abcde"),
                (None, "portal-2-fghij"), (None, "groupware-5f7d8c9b4-x2k9q"), (None, "cubrid-0"),
                (None, "cubrid-1")]
    for service, pod in entities:
        for metric in ("cpu_pct", "mem_pct", "requests_total"):
            minutes = np.sort(rng.choice(240, 200, replace=False))
            values = (np.cumsum(rng.uniform(0, 50, minutes.size)) if metric == "requests_total"
                      else rng.uniform(0, 100, minutes.size).round(2))
            if metric == "requests_total":
                values[120:] -= values[119]  # a reset
            rows += [(T0 + timedelta(minutes=int(m), seconds=int(rng.integers(0, 30))), service, pod,
                      "worker-1", metric, float(v)) for m, v in zip(minutes, values, strict=True)]
    for node in ("worker-1", "worker-2"):
        rows += [(T0 + timedelta(minutes=m), None, None, node, "disk_pct", float(rng.uniform(0, 90)))
                 for m in range(0, 240, 2)]
    frame = pl.DataFrame(rows, schema={s.TS: pl.Datetime("us", "UTC"), s.SERVICE: pl.String,
                                       s.POD: pl.String, s.NODE: pl.String, s.METRIC: pl.String,
                                       s.VALUE: pl.Float64}, orient="row")
    frame = frame.sample(fraction=1.0, shuffle=True, seed=7)  # out of order, as exports are
    again = frame.sample(n=300, seed=8)
    conflicting = frame.sample(n=100, seed=9).with_columns(pl.col(s.VALUE) + 1.0)
    bad = pl.DataFrame({
        s.TS: [T0, T0, T0, T0, T0, T0, datetime(1, 1, 1, tzinfo=UTC)],
        s.SERVICE: [None, None, None, "svc", "svc", "svc", "svc"],
        s.POD: ["weird_pod", None, None, None, None, None, None],
        s.NODE: [None, None, "worker-1", None, None, None, None],
        s.METRIC: ["cpu_pct", "cpu_pct", None, "cpu_pct", "cpu_pct", "cpu_pct", "cpu_pct"],
        s.VALUE: [1.0, 2.0, 3.0, float("nan"), float("inf"), -5.0, 1.0],
    }, schema=frame.schema)
    folder.mkdir()
    frame.write_parquet(folder / "a.parquet")
    pl.concat([again, bad]).write_parquet(folder / "b.parquet")
    conflicting.write_parquet(folder / "c.parquet")
    return folder


def outputs(folder: Path) -> dict[str, pl.DataFrame]:
    return {str(p.relative_to(folder)): pl.read_parquet(p) for p in sorted(folder.rglob("*.parquet"))}


def assert_same_outputs(a: Path, b_: Path) -> None:
    left, right = outputs(a), outputs(b_)
    assert list(left) == list(right)
    for name, frame in left.items():
        assert_frame_equal(frame, right[name], check_exact=True)
    assert json.loads((a / "report.json").read_text()) == json.loads((b_ / "report.json").read_text())


@pytest.mark.parametrize("chunk_rows", [1, 700, 3000])
def test_chunks_of_a_dirty_export_give_the_one_piece_outputs(rng, tmp_path, chunk_rows):
    source = dirty_export(rng, tmp_path / "export")
    whole = b.run_build(source, tmp_path / "whole", step="1m", max_fill=2)
    chunked = b.run_build(source, tmp_path / "chunked", step="1m", max_fill=2, chunk_rows=chunk_rows)
    assert whole == chunked
    # every reason the export was made to hit, and the counter's reset, were seen
    assert set(whole.quarantined) >= {"duplicate_conflicting_value", "missing_metric",
                                      "unknown_pod_name", "no_workload_or_node", "infinite_value",
                                      "missing_or_nan_value", "out_of_range", "time_out_of_range"}
    assert whole.exact_duplicates_merged > 0 and whole.counter_resets > 0
    assert_same_outputs(tmp_path / "whole", tmp_path / "chunked")
    assert not list((tmp_path / "chunked").rglob(".*"))  # no chunk file left in the output


def test_chunks_of_the_sample_give_the_one_piece_outputs(tmp_path):
    source = ROOT / "data" / "sample" / "export"
    whole = b.run_build(source, tmp_path / "whole", step="5m")
    chunked = b.run_build(source, tmp_path / "chunked", step="5m", chunk_rows=1)
    assert whole == chunked
    assert_same_outputs(tmp_path / "whole", tmp_path / "chunked")


def test_a_chunk_plan_never_splits_an_entity_and_runs_in_series_order(rng, tmp_path):
    from features.quarantine import LABEL_HASH, SERIES_CODE, label_table, with_label_hash

    source = dirty_export(rng, tmp_path / "export")
    labels = label_table(with_label_hash(b.scan_export(source))).collect()
    for chunk_rows in (1, 500, 2000, 10**9):
        plan, n = b.chunk_plan(labels, chunk_rows)
        joined = labels.join(plan, on=LABEL_HASH).filter(pl.col(SERIES_CODE).is_not_null())
        assert joined.group_by(s.ENTITY).agg(pl.col("_chunk").n_unique())["_chunk"].max() == 1
        by_code = joined.sort(SERIES_CODE)["_chunk"]
        assert by_code.is_sorted() and by_code.n_unique() == n
        # "svc" and "svc/d" interleave in series-id order (svc/cpu_pct < svc/d/... < svc/mem_pct):
        # they share a chunk whatever the size
        assert joined.filter(pl.col(s.ENTITY).is_in(["svc", "svc/d"]))["_chunk"].n_unique() == 1
    assert b.chunk_plan(labels, 10**9)[1] == 1

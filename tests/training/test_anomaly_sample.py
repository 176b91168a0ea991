"""The detector on the committed sample: an injected multi-metric incident ranks in the top 1%, explained."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from training.anomaly.stream import StreamConfig, score_causally

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
TRAIN_UNTIL = datetime.fromisoformat("2026-09-28T00:00:00+00:00")


def _workload_minutes(service: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The workload's pods averaged per minute and metric, straight from the export (read-only)."""
    wide = (
        pl.scan_parquet(SAMPLE / "export" / "**" / "*.parquet", hive_partitioning=True)
        .filter(pl.col("service") == service)
        .group_by("ts", "metric").agg(pl.col("value").mean())
        .collect()
        .pivot(on="metric", index="ts", values="value")
        .sort("ts")
    )
    grid = pl.DataFrame({"ts": pl.datetime_range(wide["ts"].min(), wide["ts"].max(), "1m",
                                                 time_zone="UTC", eager=True)})
    wide = grid.join(wide, on="ts", how="left")
    metrics = sorted(c for c in wide.columns if c != "ts")
    return wide["ts"].to_numpy(), wide.select(metrics).to_numpy().astype(np.float64), metrics


@pytest.fixture(scope="module")
def incident():
    truth = json.loads((SAMPLE / "ground_truth.json").read_text())
    storm = next(a for a in truth["anomalies"] if a["kind"] == "gc_storm")
    return storm


def test_injected_gc_storm_is_in_the_top_percent_and_explained(incident):
    ts, values, metrics = _workload_minutes(incident["entity"])
    ts = ts.astype("datetime64[m]")
    first = int(np.searchsorted(ts, np.datetime64(TRAIN_UNTIL.replace(tzinfo=None), "m")))
    res = score_causally(values, metrics, first, StreamConfig(),
                         ts.astype("datetime64[ns]").astype(np.int64))
    raw, top = res.surprise, res.top
    start = np.datetime64(incident["start"].removesuffix("Z"), "m")
    end = np.datetime64(incident["end"].removesuffix("Z"), "m")
    inside = np.flatnonzero((ts >= start) & (ts < end))
    assert inside.min() > first  # scored out of sample
    scored = raw[first:]
    peak = inside[np.argmax(raw[inside])]
    rank = (scored > raw[peak]).mean()
    assert rank < 0.01, f"incident peak ranks in the top {rank:.2%} only"
    assert raw[peak] >= 3  # rarer than once in 1,000 training minutes
    named = {e["metric"] for e in top[peak]}
    assert top[peak][0]["metric"] in incident["metrics"], top[peak]
    assert named <= set(metrics)

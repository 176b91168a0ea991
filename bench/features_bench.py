"""Benchmark of the feature job on a generated 10M-row dirty export, beside a plain Polars floor.

Run: ``uv run python bench/features_bench.py [--rows-scale 1.0] [--keep DIR]``.

Each measured thing runs in a fresh subprocess; wall seconds come from the parent's clock and peak
RSS from that child's own resource usage (``os.wait4``, the per-child form of
``getrusage(RUSAGE_CHILDREN)``, which would report the maximum over every child so far).

Floors, measured in the same run on the same files:
- ``floor``: plain Polars, ``scan_parquet -> sort(pod, node, metric, ts) -> group_by_dynamic``;
- ``floor-int``: the same with the label strings hashed to one integer key first (the trick the
  job itself uses), i.e. the fastest plain way to sort and bucket this file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

T0 = datetime(2026, 9, 21, 0, 0, tzinfo=UTC)
WORKLOADS = [  # (name, naming scheme): DeploymentConfig, Deployment, StatefulSet
    *((f"portal-{i}", "dc") for i in range(7)),
    *((f"groupware-{i}", "deploy") for i in range(7)),
    *((f"cubrid-{i}", "sts") for i in range(6)),
]
PODS_PER_WORKLOAD = 5
POD_METRICS = ("jvm_heap_pct", "gc_time_pct", "cpu_pct", "mem_pct", "db_pool_pct", "apdex",
               "response_time_ms", "tps", "requests_total")
NODES = [f"worker-{i}" for i in range(10)]
NODE_METRICS = ("disk_pct", *(f"node_m{i}" for i in range(9)))


def _pod_names(rng: np.random.Generator) -> list[tuple[str, str]]:
    alphabet = np.array(list("bcdfghjklmnpqrstvwxz2456789"))

    def token(n: int) -> str:
        return "".join(rng.choice(alphabet, n))

    pods = []
    for name, scheme in WORKLOADS:
        rs = token(9)
        for k in range(PODS_PER_WORKLOAD):
            pod = {"dc": f"{name}-{rng.integers(1, 40)}-{token(5)}",
                   "deploy": f"{name}-{rs}-{token(5)}", "sts": f"{name}-{k}"}[scheme]
            pods.append((pod, NODES[int(rng.integers(len(NODES)))]))
    return pods


def generate(folder: Path, days: float = 7.0, seed: int = 20260921) -> int:
    """Write a dirty long-format export, one Parquet file per UTC day; return its row count."""
    rng = np.random.default_rng(seed)
    minutes = int(days * 1440)
    pods = _pod_names(rng)
    series = [(p, n, m) for p, n in pods for m in POD_METRICS]
    series += [(None, n, m) for n in NODES for m in NODE_METRICS]
    n_series = len(series)
    sid = np.repeat(np.arange(n_series, dtype=np.int32), minutes)
    minute = np.tile(np.arange(minutes, dtype=np.int64), n_series)
    # gaps: about 3 per series, 5-60 minutes each (agent restarts)
    keep = np.ones(sid.size, dtype=bool)
    for s_ in range(n_series):
        for start, length in zip(rng.integers(0, minutes - 60, 3), rng.integers(5, 61, 3), strict=True):
            keep[s_ * minutes + start: s_ * minutes + start + length] = False
    sid, minute = sid[keep], minute[keep]
    # values: a daily cycle plus noise, in each metric's range; counters accumulate and reset
    metric_of = np.array([m for _, _, m in series])[sid]
    phase = rng.uniform(0, 2 * np.pi, n_series)[sid]
    level = 50 + 20 * np.sin(2 * np.pi * minute / 1440 + phase) + rng.normal(0, 5, sid.size)
    value = np.clip(level, 0, 100)
    value = np.where(metric_of == "apdex", value / 100, value)
    value = np.where(metric_of == "response_time_ms", value * 20, value)
    counter = metric_of == "requests_total"
    inc = np.where(counter, np.abs(level) * 60, 0.0)
    csum = np.cumsum(inc)
    first = np.r_[True, sid[1:] != sid[:-1]]
    reset = counter & (rng.random(sid.size) < 2e-4) | first
    base = np.maximum.accumulate(np.where(reset, csum - inc, 0.0))
    value = np.where(counter, np.round(csum - base), np.round(value, 3))
    ts_us = (minute * 60 + rng.integers(0, 15, sid.size)) * 1_000_000
    # dirt: exact duplicates 0.2 %, conflicting duplicates 0.05 %, NaN 0.01 %, out-of-order 1 %
    exact = rng.choice(sid.size, int(sid.size * 0.002), replace=False)
    conflict = rng.choice(sid.size, int(sid.size * 0.0005), replace=False)
    sid = np.r_[sid, sid[exact], sid[conflict]]
    ts_us = np.r_[ts_us, ts_us[exact], ts_us[conflict]]
    value = np.r_[value, value[exact], value[conflict] + 1.0]
    value[rng.choice(value.size, int(value.size * 0.0001), replace=False)] = np.nan
    order_key = ts_us.copy()
    moved = rng.random(ts_us.size) < 0.01
    order_key[moved] += rng.integers(-600, 600, int(moved.sum())) * 1_000_000
    order = np.argsort(order_key, kind="stable")
    names = pl.DataFrame({"pod": [p for p, _, _ in series], "node": [n for _, n, _ in series],
                          "metric": [m for _, _, m in series]})
    frame = names[sid[order]].select(
        (pl.lit(T0) + pl.Series("ts", ts_us[order]).cast(pl.Duration("us"))).alias("ts"),
        pl.lit(None, pl.String).alias("service"), "pod", "node", "metric",
        pl.Series("value", value[order]),
    )
    folder.mkdir(parents=True, exist_ok=True)
    day = (pl.col("ts") - pl.lit(T0)).dt.total_days()
    for (d,), part in frame.with_columns(day.alias("_day")).group_by("_day", maintain_order=True):
        part.drop("_day").write_parquet(folder / f"day-{d:02d}.parquet")
    return frame.height


def floor(source: str, step: str) -> None:
    """The least any job must do: scan, sort by series and time, bucket onto the grid."""
    keys = ["pod", "node", "metric"]
    out = (
        pl.scan_parquet(source)
        .sort(*keys, "ts")
        .group_by_dynamic("ts", every=step, group_by=keys)
        .agg(pl.col("value").mean(), pl.len())
        .collect()
    )
    print(out.height)


def floor_int(source: str, step: str) -> None:
    """The floor with the labels hashed to one integer key: no string sort."""
    out = (
        pl.scan_parquet(source)
        .select(pl.struct("pod", "node", "metric").hash(1).alias("key"), "ts", "value")
        .sort("key", "ts")
        .group_by_dynamic("ts", every=step, group_by="key")
        .agg(pl.col("value").mean(), pl.len())
        .collect()
    )
    print(out.height)


def job(source: str, out: str, step: str, tables: str = "1") -> None:
    from features.build import BuildConfig, _stderr, run_build

    report = run_build(source, out, step=step, config=BuildConfig(tables=tables == "1"),
                       progress=_stderr)
    print(report.summary())


def measure(argv: list[str]) -> tuple[float, float, str, str]:
    """Run this script with ``argv`` in a fresh process: wall s, its own peak RSS MB, out, err."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # reap it ourselves to get its own rusage
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        sys.exit(f"{argv} failed:\n{stderr}")
    return wall, usage.ru_maxrss / 1024, stdout.strip(), stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=float, default=7.0, help="days of 1-minute samples")
    parser.add_argument("--keep", type=Path, help="generate into (or reuse) this folder")
    parser.add_argument("--steps", default="1m,5m")
    parser.add_argument("--no-tables", action="store_true", help="skip the feature tables")
    parser.add_argument("_cmd", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._cmd:
        {"floor": floor, "floor-int": floor_int, "job": job}[args._cmd[0]](*args._cmd[1:])
        return
    work = Path(tempfile.mkdtemp(prefix="features-bench-"))
    data = args.keep or work / "export"
    try:
        if not (data.exists() and any(data.glob("*.parquet"))):
            t = time.perf_counter()
            rows = generate(data, args.days)
            print(f"generated {rows:,} rows in {time.perf_counter() - t:.1f} s into {data}")
        source = str(data / "*.parquet")
        for step in args.steps.split(","):
            f_wall, f_rss, _, _ = measure(["floor", source, step])
            i_wall, i_rss, _, _ = measure(["floor-int", source, step])
            j_wall, j_rss, summary, stages = measure(
                ["job", source, str(work / f"out-{step}"), step, "0" if args.no_tables else "1"])
            print(f"[{step}] job {j_wall:.2f} s, peak {j_rss:.0f} MB | floor {f_wall:.2f} s, "
                  f"{f_rss:.0f} MB (ratio {j_wall / f_wall:.2f}x) | floor-int {i_wall:.2f} s, "
                  f"{i_rss:.0f} MB (ratio {j_wall / i_wall:.2f}x)")
            print("  " + summary)
            print("\n".join("  " + line for line in stages.splitlines()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

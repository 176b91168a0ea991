"""Benchmark: one-row scoring (sklearn, numpy forest, tail score) and a 50-file batch (one call vs per file).

    uv run python bench/anomaly_bench.py [--metrics 10] [--trees 200] [--batch 10000] [--repeat 200]
                                         [--files 50] [--per-file-runs 3]

Everything is timed in the same run. Rows: scikit-learn's ``score_samples`` is the baseline of
the numpy forest (checked equal first) and of ``WorkloadAnomalyDetector.score`` (forest + tail
probability). Batch: ``--files`` seeded CSV files of 4,000-22,000 rows scored by one
``prealert score-anomalies --input FOLDER`` process, against one process per file (the baseline,
timed on ``--per-file-runs`` files and scaled to all of them).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from training.anomaly.detector import WorkloadAnomalyDetector


def _times(fn, repeat: int) -> list[float]:
    fn()  # warm up
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", type=int, default=10, help="columns per row")
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--batch", type=int, default=10_000, help="rows in the batch case")
    ap.add_argument("--repeat", type=int, default=200, help="single-row repetitions")
    ap.add_argument("--files", type=int, default=50, help="files in the batch case (0: skip it)")
    ap.add_argument("--per-file-runs", type=int, default=3, help="files timed one process each")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    names = [f"m{i}" for i in range(args.metrics)]
    det = WorkloadAnomalyDetector(n_estimators=args.trees).fit(rng.normal(size=(20_000, args.metrics)), names)
    row = rng.normal(size=(1, args.metrics))
    batch = rng.normal(size=(args.batch, args.metrics)) * 1.5
    gap = np.abs(det.flat_.score_samples(batch) - det.forest_.score_samples(batch)).max()
    print(f"forest: {args.trees} trees, {args.metrics} columns; "
          f"max |numpy - sklearn| on the batch: {gap:.1e}")

    cases = [
        ("single row", lambda: det.forest_.score_samples(row), lambda: det.flat_.score_samples(row),
         lambda: det.score(row), args.repeat),
        (f"batch of {args.batch}", lambda: det.forest_.score_samples(batch),
         lambda: det.flat_.score_samples(batch), lambda: det.score(batch), max(3, args.repeat // 40)),
    ]
    print(f"{'case':<18}{'sklearn (ms)':>14}{'numpy (ms)':>12}{'ratio':>8}{'detector.score (ms)':>22}")
    for name, sk, npy, full, rep in cases:
        t_sk = statistics.median(_times(sk, rep)) * 1e3
        t_np = statistics.median(_times(npy, rep)) * 1e3
        t_full = statistics.median(_times(full, rep)) * 1e3
        print(f"{name:<18}{t_sk:>14.3f}{t_np:>12.3f}{t_sk / t_np:>7.1f}x{t_full:>22.3f}")
    t_exp = statistics.median(_times(lambda: det.explain(row[0]), args.repeat)) * 1e3
    print(f"explain one row (re-scores it once per metric): {t_exp:.3f} ms")
    if args.files:
        batch_case(args.files, args.per_file_runs)


def _write_files(folder: Path, n_files: int) -> int:
    """Seeded one-series CSV files of 4,000-22,000 minutes (daily cycle, noise, a few spikes)."""
    import polars as pl

    rng = np.random.default_rng(1)
    total = 0
    for i in range(n_files):
        n = int(rng.integers(4_000, 22_001))
        t = np.arange(n)
        v = 50 + 10 * np.sin(2 * np.pi * t / 1440) + rng.normal(0, 1, n)
        v[rng.integers(n // 2, n, 3)] += 30
        start = pl.datetime(2026, 1, 1)
        ts = pl.datetime_range(start, start + pl.duration(minutes=n - 1), "1m", eager=True)
        pl.DataFrame({"timestamp": ts, "value": v}).write_csv(folder / f"series_{i:03d}.csv")
        total += n
    return total


def _cli(*args: str) -> tuple[float, float]:
    """Wall and CPU seconds of one ``prealert score-anomalies`` process (CPU: the machine may be shared)."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    prealert = str(Path(sys.executable).with_name("prealert"))  # the installed command, as operators run it
    subprocess.run([prealert, "score-anomalies", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t, (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)


def batch_case(n_files: int, per_file_runs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="prealert-bench-"))
    try:
        src = tmp / "in"
        src.mkdir()
        rows = _write_files(src, n_files)
        files = sorted(src.iterdir())
        one = [_cli("--input", str(f), "--out", str(tmp / "one" / f"{f.stem}.csv"))
               for f in files[:per_file_runs]]
        share = sum(f.stat().st_size for f in files[:per_file_runs]) / sum(f.stat().st_size for f in files)
        per_file = [sum(x[k] for x in one) / share for k in (0, 1)]
        batch = _cli("--input", str(src), "--out", str(tmp / "batch"))
        print(f"batch of {n_files} files ({rows} rows), wall / CPU seconds: one call {batch[0]:.1f} / "
              f"{batch[1]:.1f}; one process per file {per_file[0]:.1f} / {per_file[1]:.1f} (timed on "
              f"{per_file_runs}, scaled by size); ratio {per_file[0] / batch[0]:.1f}x wall, "
              f"{per_file[1] / batch[1]:.1f}x CPU")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

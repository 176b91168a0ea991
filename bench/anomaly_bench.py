"""Benchmark: scoring one row and a batch with scikit-learn's score_samples vs the flattened numpy forest.

    uv run python bench/anomaly_bench.py [--metrics 10] [--trees 200] [--batch 10000] [--repeat 200]

Both are timed in the same run on the same fitted forest; the numpy scores are checked equal first.
"""

from __future__ import annotations

import argparse
import statistics
import time

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


if __name__ == "__main__":
    main()

"""Benchmark: full (generation-2) garbage collections in the served worker with and without freezing the
loaded model, in one run on one machine.

    uv run python bench/gc_bench.py [--requests 4000] [--connections 2] [--bundle DIR]

Starts a real ``bentoml serve`` twice on 127.0.0.1 (``PREALERT_GC_FREEZE=0``, then the default), sends
the same ``/predict`` requests (90 minutes of observations) to each, and prints the worker's full
collections during the load (count, total and max pause, from ``gc.callbacks``, read on ``/status``)
beside the client's p50/p99/max latency.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from serving.server import free_port, start_service, stop_service, wait_ready

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "sample" / "golden_bundle"


def body() -> dict:
    end = datetime(2026, 10, 14, 23, 45, tzinfo=UTC)
    recent = [{"ts": (end - timedelta(minutes=89 - i)).isoformat(), "value": 60 + 0.01 * i}
              for i in range(90)]
    return {"series_id": "golden-app/jvm_heap_pct", "threshold": 68, "horizon_minutes": 240, "recent": recent}


def run(bundle: Path, freeze: bool, n: int, connections: int, log: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_service(port, bundle=bundle, log_file=log,
                         env={"PREALERT_GC_FREEZE": "1" if freeze else "0", "PREALERT_RELOAD_SECONDS": "0"})
    try:
        wait_ready(proc, url, log_file=log)
        payload = body()
        with httpx.Client(timeout=60) as c:
            for _ in range(50):  # warm up
                c.post(f"{url}/predict", json=payload).raise_for_status()
            before = c.get(f"{url}/status").json()["gc"]
        latencies: list[float] = []
        lock = threading.Lock()

        def worker(count: int) -> None:
            with httpx.Client(timeout=60) as c:
                for _ in range(count):
                    t = time.perf_counter()
                    c.post(f"{url}/predict", json=payload).raise_for_status()
                    with lock:
                        latencies.append(time.perf_counter() - t)

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(n // connections,)) for _ in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        after = httpx.get(f"{url}/status", timeout=60).json()["gc"]
    finally:
        stop_service(proc)
    latencies.sort()
    return {
        "freeze": freeze, "requests": len(latencies), "req_per_s": len(latencies) / wall,
        "p50_ms": 1e3 * statistics.median(latencies), "p99_ms": 1e3 * latencies[int(0.99 * len(latencies))],
        "max_ms": 1e3 * latencies[-1],
        "full_gcs": after["full_collections"] - before["full_collections"],
        "full_gc_total_ms": after["total_ms"] - before["total_ms"],
        "full_gc_max_ms": max(after["recent_ms"][len(after["recent_ms"]) - (
            after["full_collections"] - before["full_collections"]):] or [0.0]),
        "frozen_objects": after["frozen_objects"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--bundle", type=Path, default=GOLDEN)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(args.bundle, freeze, args.requests, args.connections, Path(tmp) / f"serve-{freeze}.log")
                for freeze in (False, True)]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()

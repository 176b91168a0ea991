"""A fixed-rate soak of ``/predict`` on a real ``bentoml serve``: errors, latency and the server's RSS.

Run: ``uv run python bench/soak_bench.py [--rate 20] [--minutes 10] [--bundle data/sample/golden_bundle]``.
Requests leave on a fixed schedule (an open loop: one every 1/rate s whether or not the previous ones
have answered, at most ``--in-flight`` at once; a request that cannot leave on time is counted late),
with the same body as ``serve_bench.py``. The RSS of the server's process tree and of its largest process
(the worker) is sampled every 30 s. No assertions: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from serve_bench import ROOT, percentile, request_body, uptime

from serving.server import free_port, start_service, stop_service, wait_ready

RSS_EVERY_S = 30


def rss_mb(pid: int) -> tuple[float, float]:
    """(the whole process tree's RSS, the largest single process's RSS) in MB."""
    root = psutil.Process(pid)
    sizes = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            sizes.append(proc.memory_info().rss)
        except psutil.NoSuchProcess:
            continue
    return sum(sizes) / 2**20, max(sizes) / 2**20


async def soak(url: str, pid: int, rate: float, seconds: float, in_flight: int) -> dict:
    body = json.dumps(request_body()).encode()
    headers = {"content-type": "application/json"}
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    rss: list[tuple[float, float, float]] = []
    late = 0
    slots = asyncio.Semaphore(in_flight)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one() -> None:
            try:
                t = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                latencies.append((time.perf_counter() - t) * 1e3)
                key = str(response.status_code)
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            finally:
                slots.release()
            statuses[key] = statuses.get(key, 0) + 1

        tasks = []
        start = time.monotonic()
        next_rss = 0.0
        i = 0
        while (now := time.monotonic() - start) < seconds:
            if now >= next_rss:
                rss.append((now, *rss_mb(pid)))
                next_rss += RSS_EVERY_S
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if slots.locked() or time.monotonic() - due > 1.0 / rate:
                late += 1
            await slots.acquire()
            tasks.append(asyncio.create_task(one()))
            i += 1
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
    rss.append((elapsed, *rss_mb(pid)))
    return {"sent": i, "elapsed": elapsed, "statuses": statuses, "late": late,
            "latencies": latencies, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20, help="requests per second")
    parser.add_argument("--minutes", type=float, default=10, help="length of the soak")
    parser.add_argument("--in-flight", type=int, default=8, help="most requests outstanding at once")
    parser.add_argument("--bundle", type=Path, default=ROOT / "data" / "sample" / "golden_bundle")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-bench-") as tmp:
        log = Path(tmp) / "serve.log"
        port = free_port()
        proc = start_service(port, bundle=args.bundle.resolve(), log_file=log)
        try:
            wait_ready(proc, f"http://127.0.0.1:{port}", timeout=900, log_file=log)
            print(f"# ready; start {uptime()}", flush=True)
            result = asyncio.run(soak(f"http://127.0.0.1:{port}/predict", proc.pid, args.rate,
                                      args.minutes * 60, args.in_flight))
            print(f"# end {uptime()}", flush=True)
        finally:
            stop_service(proc)
    lat = result["latencies"]
    errors = sum(n for k, n in result["statuses"].items() if k != "200")
    print(f"\n## soak: {args.rate:g} req/s for {args.minutes:g} min, at most {args.in_flight} in flight\n")
    print(f"- sent {result['sent']:,} in {result['elapsed']:.0f} s ({result['sent'] / result['elapsed']:.1f} "
          f"req/s), late {result['late']}, answers {result['statuses']}, errors {errors}")
    print(f"- latency ms: p50 {percentile(lat, 0.5):.1f}, p90 {percentile(lat, 0.9):.1f}, "
          f"p99 {percentile(lat, 0.99):.1f}, max {max(lat):.1f}, mean {statistics.fmean(lat):.1f}")
    print("\n| minute | server tree RSS MB | worker (largest process) RSS MB |")
    print("|---|---|---|")
    for t, tree, worker in result["rss"]:
        print(f"| {t / 60:.1f} | {tree:,.0f} | {worker:,.0f} |")


if __name__ == "__main__":
    main()

"""Full garbage collections and live objects in the ``bentoml serve`` worker under load, with and without
prealert's replacement of BentoML's TimeoutMiddleware (``serving/bentoml_fixes.py``).

Run: ``uv run python bench/serve_gc_bench.py [--duration 45] [--connections 4]``. Starts four servers of
the same bundle: BentoML's middleware or prealert's (``PREALERT_BENTOML_FIXES=off``), each with and
without ``gc.freeze()`` after the bundle is loaded (done by the bench probe on the first request, standing
in for the service's own freeze), then loads each in turn with ``wrk`` and reads the probe's log: the
tracked objects (``len(gc.get_objects())`` every 5 s) and every generation-2 collection's duration.
No assertions: numbers only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from serve_bench import (
    ROOT,
    in_window,
    percentile,
    probe_dir,
    probe_env,
    probe_records,
    request_body,
    uptime,
    wrk,
)
from serve_bench import WRK_LUA as SCRIPT

from serving.server import free_port, start_service, stop_service, wait_ready

VARIANTS = {  # name -> (middleware fix on, freeze after load)
    "BentoML TimeoutMiddleware": (False, False),
    "prealert PromptTimeoutMiddleware": (True, False),
    "BentoML TimeoutMiddleware + freeze": (False, True),
    "prealert PromptTimeoutMiddleware + freeze": (True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=45, help="seconds of load per server")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections")
    parser.add_argument("--bundle", type=Path, default=ROOT / "data" / "sample" / "golden_bundle")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-gc-bench-") as tmp:
        tmp = Path(tmp)
        body_file, script = tmp / "body.json", tmp / "post.lua"
        body_file.write_text(json.dumps(request_body()))
        script.write_text(SCRIPT)
        servers = {}
        for i, (name, (fix, freeze)) in enumerate(VARIANTS.items()):
            folder = tmp / f"v{i}"
            folder.mkdir()
            probe = probe_dir(folder)
            extra = {"PREALERT_BENCH_COUNT_OBJECTS_EVERY": "5"}
            if not fix:
                extra["PREALERT_BENTOML_FIXES"] = "off"
            if freeze:
                extra["PREALERT_BENCH_FREEZE"] = "1"
            port = free_port()
            proc = start_service(port, bundle=args.bundle.resolve(), env=probe_env(probe, **extra),
                                 log_file=folder / "serve.log")
            servers[name] = (proc, port, probe, folder / "serve.log")
        rows = []
        try:
            for proc, port, _, log in servers.values():
                wait_ready(proc, f"http://127.0.0.1:{port}", timeout=900, log_file=log)
            print(f"# four servers ready; {uptime()}", flush=True)
            for name, (_, port, probe, _) in servers.items():
                url = f"http://127.0.0.1:{port}/predict"
                wrk(url, 1, 3, body_file, script)  # warm-up (and the freeze, where asked)
                time.sleep(6)  # one object count before the load
                t0 = time.time()
                stats = wrk(url, args.connections, args.duration, body_file, script)
                t1 = time.time()
                time.sleep(6)  # one object count after it
                (rec,) = [r for r in probe_records(probe) if r["predict_ms"]]
                objects = [(t, n) for t, n in rec["objects"] if t0 - 6 <= t <= t1 + 6]
                gcs = in_window(rec["gen2"], t0, t1)
                rows.append((name, stats, objects, gcs))
                print(f"# {name} done; {uptime()}", flush=True)
        finally:
            for proc, *_ in servers.values():
                stop_service(proc)
    print(f"\n## bentoml serve worker, wrk {args.connections} connections x {args.duration} s per server; "
          f"{uptime()}\n")
    print("| worker | requests | req/s | p50 ms | p99 ms | max ms | tracked objects before -> after "
          "| growth per 1k requests | full GCs | GC median ms | GC max ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, s, objects, gcs in rows:
        before, after = objects[0][1], objects[-1][1]
        growth = (after - before) / s["requests"] * 1000
        print(f"| {name} | {s['requests']:,} | {s['rps']:.0f} | {s['p50'] / 1e3:.2f} | "
              f"{s['p99'] / 1e3:.2f} | {s['max'] / 1e3:.1f} | {before:,} -> {after:,} | {growth:+,.0f} | "
              f"{len(gcs)} | "
              f"{percentile(gcs, 0.5):.1f} | {max(gcs, default=float('nan')):.1f} |")


if __name__ == "__main__":
    main()

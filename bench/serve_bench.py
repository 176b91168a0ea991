"""``/predict`` latency against the HTTP floor in one run: bare Starlette, + Predictor, ``bentoml serve``.

Run: ``uv run python bench/serve_bench.py [--duration 10] [--rounds 3] [--connections 1,4]
[--bundle data/sample/golden_bundle] [--json out.json] [--stages predict,batch,inprocess]``
(``--stages batch`` times only the batch, while iterating). Needs Debian's ``wrk`` on PATH
(``apt-get install -y wrk``). Everything listens on 127.0.0.1 and is stopped at the end.

Three targets get the same POST (one series, 90 one-minute observations): "floor" (a bare Starlette
endpoint that reads the body and returns a constant of the size of a real answer), "floor + predict"
(the same ``Predictor`` behind bare Starlette) and "serve" (a real ``bentoml serve`` of the service).
Rounds interleave the targets so that load drift on the shared machine hits all three alike; each
figure is the median over rounds (max: the largest over rounds). A probe (``sitecustomize`` on the
servers' path, bench only) times ``Predictor.predict`` inside each server and logs full (generation-2)
garbage collections. Then ``/predict_batch`` of ``--batch-series`` distinct series (the served bundle is
``--bundle`` plus clones of its heap forecaster under new ids, so every target serves it) to "floor +
predict" and "serve", timed sequentially (one request to each in turn; their ratio); and the same batch
in-process, one ``predict_batch_json`` against a loop of ``predict`` over its items (their ratio). No
assertions: numbers only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from serving.server import free_port, start_service, stop_service, wait_ready

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

SERIES = "golden-app/jvm_heap_pct"
THRESHOLD = 68.0
OBSERVATIONS = 90
#: what a run measures: /predict under wrk (with the probe), /predict_batch through the servers,
#: and both in-process
STAGES = ("predict", "batch", "inprocess")

#: wrk script: POST the body file, print the summary as one JSON line (latencies in microseconds)
WRK_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

#: bench-only probe, imported by every Python process started with its folder on PYTHONPATH
PROBE = r'''
"""Bench probe: times serving.predictor.Predictor.predict and logs full garbage collections."""
import gc, json, os, sys, threading, time

_OUT = os.environ.get("PREALERT_BENCH_PROBE_DIR")
if _OUT:
    _gen2, _predict, _objects, _start = [], [], [], {}

    def _on_gc(phase, info):
        if info["generation"] != 2:
            return
        if phase == "start":
            _start["t"] = time.perf_counter()
        elif "t" in _start:
            _gen2.append((time.time(), (time.perf_counter() - _start.pop("t")) * 1e3))

    gc.callbacks.append(_on_gc)

    def _wrap(cls):
        original = cls.predict
        state = {"first": True}

        def predict(self, request):
            if state["first"] and os.environ.get("PREALERT_BENCH_FREEZE"):
                state["first"] = False
                gc.collect()
                gc.freeze()  # what "freeze after the bundle is loaded" does
            t = time.perf_counter()
            try:
                return original(self, request)
            finally:
                _predict.append((time.time(), (time.perf_counter() - t) * 1e3))

        cls.predict = predict

    def _watch():
        wrapped, last_count, last_dump = False, 0.0, 0.0
        every = float(os.environ.get("PREALERT_BENCH_COUNT_OBJECTS_EVERY", "0"))
        while True:
            time.sleep(0.5)
            module = sys.modules.get("serving.predictor")
            if not wrapped and module is not None and hasattr(module, "Predictor"):
                _wrap(module.Predictor)
                wrapped = True
            if not wrapped:
                continue
            if every and time.time() - last_count >= every:
                last_count = time.time()
                _objects.append((last_count, len(gc.get_objects())))
            # written only when the bench asks (a file "dump"): writing holds the GIL under load
            ask = os.path.join(_OUT, "dump")
            if not os.path.exists(ask) or os.path.getmtime(ask) <= last_dump:
                continue
            last_dump = os.path.getmtime(ask)
            tmp = os.path.join(_OUT, f".{os.getpid()}.tmp")
            with open(tmp, "w") as f:
                json.dump({"pid": os.getpid(), "gen2": _gen2, "predict_ms": _predict,
                           "objects": _objects}, f)
            os.replace(tmp, os.path.join(_OUT, f"{os.getpid()}.json"))

    threading.Thread(target=_watch, daemon=True, name="bench-probe").start()
'''


def request_body(observations: int = OBSERVATIONS) -> dict:
    """One ``/predict`` request: the last ``observations`` minutes after the golden training window."""
    end = datetime.fromisoformat("2026-10-15T00:30:00+00:00")
    recent = [{"ts": (end - timedelta(minutes=observations - 1 - i)).isoformat().replace("+00:00", "Z"),
               "value": round(60.0 + 0.02 * i, 3)} for i in range(observations)]
    return {"series_id": SERIES, "threshold": THRESHOLD, "horizon_minutes": 240, "recent": recent}


def batch_bundle(source: Path, series: int, folder: Path) -> Path:
    """``source`` with ``series - 1`` clones of its ``SERIES`` forecaster under new ids (bench-NNNNN/...),
    so one bundle serves both ``/predict`` of ``SERIES`` and a batch of ``series`` distinct series."""
    import copy

    from bundle_bench import ClonedForecaster

    from training.bundle import ModelBundle

    golden = ModelBundle.load(source)
    clone = ClonedForecaster(golden.forecasters[SERIES])
    ids = [f"bench-{i:05d}/{SERIES.split('/')[1]}" for i in range(series - 1)]
    manifest = copy.deepcopy(golden.manifest)
    manifest["series"] = {**manifest.get("series", {}),
                          **dict.fromkeys(ids, manifest.get("series", {}).get(SERIES, {}))}
    forecasters = {**golden.forecasters, **dict.fromkeys(ids, clone)}
    return ModelBundle(manifest, forecasters, dict(golden.detectors)).save(folder)


def batch_body(series: int, observations: int) -> dict:
    """``/predict_batch`` of ``series`` distinct series, ``observations`` one-minute observations each."""
    one = request_body(observations)
    ids = [SERIES] + [f"bench-{i:05d}/{SERIES.split('/')[1]}" for i in range(series - 1)]
    return {"items": [dict(one, series_id=sid) for sid in ids]}


def time_batches(url: str, body: bytes, repeats: int) -> list[float]:
    """Wall ms of ``repeats`` sequential POSTs of ``body`` (one connection, after one warm-up)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    times = []
    try:
        for i in range(repeats + 1):
            t = time.perf_counter()
            conn.request("POST", parts.path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                raise RuntimeError(f"{url}: {response.status} {answer[:300]!r}")
            if i:
                times.append((time.perf_counter() - t) * 1e3)
    finally:
        conn.close()
    return times


def probe_dir(parent: Path) -> Path:
    folder = parent / "probe"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(PROBE)
    (folder / "out").mkdir()
    return folder


def probe_env(probe: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(probe), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "PREALERT_BENCH_PROBE_DIR": str(probe / "out"), **extra}


def probe_records(probe: Path) -> list[dict]:
    """What each probed process (the ones that loaded the predictor) has logged until now."""
    asked = time.time()
    (probe / "out" / "dump").write_text(str(asked))
    time.sleep(2.5)  # the probe looks every 0.5 s
    records = []
    for path in (probe / "out").glob("*.json"):
        if path.stat().st_mtime < asked:  # a process that has not answered the ask (not serving)
            continue
        try:
            records.append(json.loads(path.read_text()))
        except ValueError:  # being replaced right now: the next read has it
            continue
    return records


def in_window(pairs: list, start: float, end: float) -> list[float]:
    return [v for t, v in pairs if start <= t <= end]


def start_starlette(kind: str, port: int, bundle: Path, log: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, str(BENCH / "serve_bench.py"), "_app", kind, "--port", str(port),
           "--bundle", str(bundle)]
    out = open(log, "ab")  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        out.close()


def run_app(kind: str, port: int, bundle: Path) -> None:
    """The bare Starlette servers: ``floor`` answers a constant, ``predict`` the Predictor's answer."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from serving.predictor import Predictor
    from serving.schemas import PredictRequest
    from training.bundle import ModelBundle

    predictor = Predictor(ModelBundle.load(bundle))
    answer = predictor.predict(PredictRequest.model_validate_json(json.dumps(request_body())))
    answer = answer.model_dump_json().encode()

    async def floor(request: Request) -> Response:
        await request.body()
        return Response(answer, media_type="application/json")

    async def predict(request: Request) -> Response:
        req = PredictRequest.model_validate_json(await request.body())
        return Response(predictor.predict(req).model_dump_json(), media_type="application/json")

    async def predict_batch(request: Request) -> Response:  # the service's own batch path
        return Response(predictor.predict_batch_json(await request.body()), media_type="application/json")

    async def ready(request: Request) -> Response:
        return JSONResponse({"ok": True})

    endpoint = floor if kind == "floor" else predict
    app = Starlette(routes=[Route("/predict", endpoint, methods=["POST"]), Route("/readyz", ready),
                            Route("/predict_batch", predict_batch, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def wrk(url: str, connections: int, duration: int, body_file: Path, script: Path) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script), url]
    done = subprocess.run(cmd, env={**os.environ, "BENCH_BODY_FILE": str(body_file)},
                          capture_output=True, text=True, check=True)
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON "))
    stats = json.loads(line.removeprefix("WRK_JSON "))
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    stats["errors"] = sum(stats[k] for k in ("connect", "read", "write", "status", "timeout"))
    return stats


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def summarize(rounds: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in rounds) for k in ("p50", "p90", "p99", "rps")}
    med["max"] = max(r["max"] for r in rounds)
    med["errors"] = sum(r["errors"] for r in rounds)
    med["requests"] = sum(r["requests"] for r in rounds)
    return med


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def inprocess_predict_ms(bundle: Path, repeats: int = 300) -> list[float]:
    """The same call in this process, no server: parse the body, predict, dump the answer."""
    from serving.predictor import Predictor
    from serving.schemas import PredictRequest
    from training.bundle import ModelBundle

    predictor = Predictor(ModelBundle.load(bundle))
    raw = json.dumps(request_body())
    times = []
    for i in range(repeats + 20):
        t = time.perf_counter()
        predictor.predict(PredictRequest.model_validate_json(raw)).model_dump_json()
        if i >= 20:
            times.append((time.perf_counter() - t) * 1e3)
    return times


def inprocess_batch_ms(bundle: Path, raw: bytes, repeats: int) -> dict[str, list[float]]:
    """The batch body answered in this process, no server: as one ``predict_batch`` (parse, answer,
    dump) and as a loop of ``predict`` over its items (each parsed, answered, dumped alone);
    interleaved, so load drift hits both alike. Wall ms per round."""
    from serving.predictor import Predictor
    from serving.schemas import PredictRequest
    from training.bundle import ModelBundle

    predictor = Predictor(ModelBundle.load(bundle))
    items = [json.dumps(item) for item in json.loads(raw)["items"]]
    ways = ("batch", "per-item loop", "batch cpu", "per-item loop cpu")
    times: dict[str, list[float]] = {k: [] for k in ways}
    for i in range(repeats + 1):
        t, c = time.perf_counter(), time.process_time()
        predictor.predict_batch_json(raw)
        batch, batch_cpu = (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3
        t, c = time.perf_counter(), time.process_time()
        for item in items:
            predictor.predict(PredictRequest.model_validate_json(item)).model_dump_json()
        loop, loop_cpu = (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3
        if i:  # the first round warms caches
            for key, value in (("batch", batch), ("per-item loop", loop), ("batch cpu", batch_cpu),
                               ("per-item loop cpu", loop_cpu)):
                times[key].append(value)
    return times


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_app"]:
        p = argparse.ArgumentParser()
        p.add_argument("kind", choices=["floor", "predict"])
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--bundle", type=Path, required=True)
        a = p.parse_args(argv[1:])
        run_app(a.kind, a.port, a.bundle)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target and connection count")
    parser.add_argument("--connections", default="1,4", help="comma-separated wrk connection counts")
    parser.add_argument("--bundle", type=Path, default=ROOT / "data" / "sample" / "golden_bundle",
                        help="bundle folder every target serves")
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    parser.add_argument("--batch-series", type=int, default=1000,
                        help="series in the /predict_batch request (the served bundle gets clones to match)")
    parser.add_argument("--batch-observations", type=int, default=10, help="observations per batch item")
    parser.add_argument("--batch-repeats", type=int, default=10, help="timed batch requests per target")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated stages to run, of {', '.join(STAGES)} (default: all)")
    args = parser.parse_args(argv)
    stages = set(args.stages.split(","))
    if not stages or stages - set(STAGES):
        sys.exit(f"--stages: choose from {', '.join(STAGES)}")
    if "predict" in stages and shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH: apt-get install -y wrk")
    conns = [int(c) for c in args.connections.split(",")]

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        tmp = Path(tmp)
        bundle = batch_bundle(args.bundle.resolve(), args.batch_series, tmp / "bundle")
        batch_raw = json.dumps(batch_body(args.batch_series, args.batch_observations)).encode()
        probe = probe_dir(tmp)
        env = probe_env(probe)
        body_file, script = tmp / "body.json", tmp / "post.lua"
        body_file.write_text(json.dumps(request_body()))
        script.write_text(WRK_LUA)
        servers = ("floor", "floor + predict", "serve") if "predict" in stages else \
            ("floor + predict", "serve") if "batch" in stages else ()
        ports = {name: free_port() for name in servers}
        logs = {name: tmp / f"{name.replace(' + ', '-')}.log" for name in ports}
        procs = {name: start_starlette("floor" if name == "floor" else "predict", ports[name], bundle,
                                       logs[name], env) for name in servers if name != "serve"}
        started = time.monotonic()
        if "serve" in servers:
            procs["serve"] = start_service(ports["serve"], bundle=bundle, env=env, log_file=logs["serve"])
        results: dict[tuple[str, int], list[dict]] = {}
        records: list[dict] = []
        batches: dict = {}
        try:
            for name, proc in procs.items():
                wait_ready(proc, f"http://127.0.0.1:{ports[name]}", timeout=600, log_file=logs[name])
            if procs:
                print(f"# {', '.join(procs)} ready after {time.monotonic() - started:.1f} s; {uptime()}",
                      flush=True)
            if "predict" in stages:
                urls = {name: f"http://127.0.0.1:{port}/predict" for name, port in ports.items()}
                for url in urls.values():  # warm-up, not counted
                    wrk(url, 1, 2, body_file, script)
                for r in range(args.rounds):
                    for c in conns:
                        for name, url in urls.items():
                            t0 = time.time()
                            stats = wrk(url, c, args.duration, body_file, script)
                            stats.update(round=r, target=name, connections=c, start=t0, end=time.time())
                            results.setdefault((name, c), []).append(stats)
                    print(f"# round {r + 1}/{args.rounds} done; {uptime()}", flush=True)
                records = probe_records(probe)
            if "batch" in stages:
                # interleaved, one request to each target in turn, so that load drift hits both alike
                urls = {name: f"http://127.0.0.1:{ports[name]}/predict_batch" for name in ("floor + predict",
                                                                                           "serve")}
                batches = {name: [] for name in urls}
                for _ in range(args.batch_repeats):
                    for name, url in urls.items():
                        batches[name] += time_batches(url, batch_raw, 1)
                batches["load average"] = uptime()
        finally:
            for proc in procs.values():
                stop_service(proc)
        if "predict" in stages:
            inproc = inprocess_predict_ms(bundle) if "inprocess" in stages else []
            report(results, records, inproc, conns, args)
        if "batch" in stages:
            print(f"\n## /predict_batch, {args.batch_series:,} distinct series x {args.batch_observations} "
                  f"observations ({len(batch_raw) / 1024:,.0f} KB body), {args.batch_repeats} sequential "
                  f"requests per target, interleaved; {batches.pop('load average')}\n")
            print("| target | p50 ms | p90 ms | p99 ms | min ms | max ms | ms an item (p50) |")
            print("|---|---|---|---|---|---|---|")
            for name, times in batches.items():
                print(f"| {name} | {statistics.median(times):,.0f} | {percentile(times, 0.9):,.0f} | "
                      f"{percentile(times, 0.99):,.0f} | {min(times):,.0f} | {max(times):,.0f} | "
                      f"{statistics.median(times) / args.batch_series:.2f} |")
            ratio = statistics.median(batches["serve"]) / statistics.median(batches["floor + predict"])
            print(f"\nserve / floor + predict (p50): {ratio:.2f}")
        if "inprocess" in stages:
            inproc_batch = inprocess_batch_ms(bundle, batch_raw, max(3, args.batch_repeats // 2))
            print(f"\n## the same batch in-process (no server), interleaved rounds; {uptime()}\n")
            print("| way | p50 ms | min ms | ms an item (p50) | CPU ms (p50) | CPU ms (min) |")
            print("|---|---|---|---|---|---|")
            for name in ("batch", "per-item loop"):
                times, cpu = inproc_batch[name], inproc_batch[f"{name} cpu"]
                print(f"| {name} | {statistics.median(times):,.0f} | {min(times):,.0f} | "
                      f"{statistics.median(times) / args.batch_series:.3f} | {statistics.median(cpu):,.0f} | "
                      f"{min(cpu):,.0f} |")
            med = {k: statistics.median(v) for k, v in inproc_batch.items()}
            print(f"\nbatch / per-item loop (p50): wall {med['batch'] / med['per-item loop']:.3f}, "
                  f"CPU {med['batch cpu'] / med['per-item loop cpu']:.3f}")


def report(results: dict, records: list[dict], inproc: list[float], conns: list[int], args) -> None:
    us = 1e-3
    print(f"\n## /predict, {OBSERVATIONS} observations, {args.rounds} x {args.duration:g} s rounds per row "
          f"(median over rounds; max over rounds); {uptime()}\n")
    print("| target | conns | p50 ms | p90 ms | p99 ms | max ms | req/s | errors |")
    print("|---|---|---|---|---|---|---|---|")
    summary = {key: summarize(rows) for key, rows in results.items()}
    for c in conns:
        for name in ("floor", "floor + predict", "serve"):
            s = summary[(name, c)]
            print(f"| {name} | {c} | {s['p50'] * us:.2f} | {s['p90'] * us:.2f} | {s['p99'] * us:.2f} | "
                  f"{s['max'] * us:.1f} | {s['rps']:,.0f} | {s['errors']} |")
    print("\n| ratio | conns | p50 | p99 | throughput |")
    print("|---|---|---|---|---|")
    for c in conns:
        fl, fp, sv = (summary[(n, c)] for n in ("floor", "floor + predict", "serve"))
        for label, a, b in (("floor + predict / floor", fp, fl),
                            ("serve / floor + predict (targets: <= 1.3, <= 2, >= 0.75)", sv, fp)):
            print(f"| {label} | {c} | {a['p50'] / b['p50']:.2f} | {a['p99'] / b['p99']:.2f} | "
                  f"{a['rps'] / b['rps']:.2f} |")

    print("\n## Predictor.predict inside each server (probe), during the rounds\n")
    print("| where | calls | median ms | p90 ms | p99 ms | full GCs | GC median ms | GC max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("floor + predict", "serve"):
        rows = [r for rows in results.values() for r in rows if r["target"] == name]
        times, gcs = [], []
        for rec in records:
            for row in rows:
                times += in_window(rec["predict_ms"], row["start"], row["end"])
                gcs += in_window(rec["gen2"], row["start"], row["end"])
        print(f"| {name} | {len(times):,} | {percentile(times, 0.5):.2f} | {percentile(times, 0.9):.2f} | "
              f"{percentile(times, 0.99):.2f} | {len(gcs)} | {percentile(gcs, 0.5):.1f} | "
              f"{max(gcs, default=float('nan')):.1f} |")
    if args.json:
        args.json.write_text(json.dumps({f"{k[0]}@{k[1]}": v for k, v in results.items()}, indent=1))
    if not inproc:
        return
    print(f"| in-process loop (parse + predict + dump, no server) | {len(inproc)} | "
          f"{percentile(inproc, 0.5):.2f} | {percentile(inproc, 0.9):.2f} | {percentile(inproc, 0.99):.2f} "
          "| | | |")


if __name__ == "__main__":
    main()

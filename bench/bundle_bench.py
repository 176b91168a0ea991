"""Load time and memory of a 10,000-series bundle, and where the load's time goes.

Run: ``uv run python bench/bundle_bench.py [--series 10000] [--profile-series 500] [--keep DIR]``.
Builds a synthetic bundle by cloning one trained series' forecaster (from the golden bundle, or
``--source``) under ``--series`` ids, written with ``ModelBundle.save`` (checksums and all), then
loads it in a fresh process: wall time of ``ModelBundle.load``, RSS before and after; then the same for
``--old-series`` clones written in schema 2 (each series file holding the Prophet JSON that load
parses), the format before, in the same run. A last fresh
process profiles the load of a ``--profile-series`` bundle built the same way and prints where the time
goes. ``--serve`` also starts a real ``bentoml serve`` of the big bundle and states its time to ready
and memory (``--no-load`` skips the fresh-process load and profile). Everything lives in a temporary
folder unless ``--keep`` names one. No assertions: numbers only.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from serving.server import free_port, start_service, stop_service, wait_ready
from training.bundle import ModelBundle, file_stem

ROOT = Path(__file__).resolve().parents[1]
SOURCE_SERIES = "golden-app/jvm_heap_pct"

MEASURE = r"""
import json, resource, sys, time
from pathlib import Path
def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from training.bundle import ModelBundle, file_stem
before = rss_mb()
t, cpu = time.perf_counter(), time.process_time()
bundle = ModelBundle.load(sys.argv[1])
took, cpu = time.perf_counter() - t, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"series": len(bundle.forecasters), "load_s": took, "cpu_s": cpu, "rss_before_mb": before,
                  "rss_after_mb": rss_mb(), "peak_rss_mb": peak}))
"""

PROFILE = r"""
import cProfile, pstats, sys
from training.bundle import ModelBundle, file_stem
profiler = cProfile.Profile()
profiler.enable()
ModelBundle.load(sys.argv[1])
profiler.disable()
stats = pstats.Stats(profiler)
total = stats.total_tt
print(f"profiled load: {total:.2f} s")
rows = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)
print("| cumulative s | share | calls | function |")
print("|---|---|---|---|")
for (path, line, name), (cc, nc, tt, ct, callers) in rows[:int(sys.argv[2])]:
    print(f"| {ct:.2f} | {ct / total:.0%} | {nc} | {name} ({path.split('site-packages/')[-1]}:{line}) |")
"""


class ClonedForecaster:
    """One trained forecaster written under many ids: its files are computed once, as ``save`` writes them."""

    def __init__(self, model):
        self.kind_ = model.kind_
        self.state = json.dumps(model.to_dict(with_prophet=False))
        self.prophet = model.prophet_json() if model.kind_ == "prophet" else None

    def to_dict(self, with_prophet: bool = True) -> dict:
        return json.loads(self.state)

    def prophet_json(self) -> str:
        return self.prophet


def _ids(series: int) -> list[str]:
    return [f"bench-{i:05d}/jvm_heap_pct" for i in range(series)]


def build(source: ModelBundle, series: int, folder: Path) -> Path:
    """The current format (schema 3): ``ModelBundle.save`` of the clones."""
    info = source.manifest.get("series", {}).get(SOURCE_SERIES, {})
    manifest = copy.deepcopy(source.manifest)
    ids = _ids(series)
    manifest["series"] = {sid: info for sid in ids}
    clone = ClonedForecaster(source.forecasters[SOURCE_SERIES])
    return ModelBundle(manifest, dict.fromkeys(ids, clone), dict(source.detectors)).save(folder)


def build_v2(source: ModelBundle, series: int, folder: Path) -> Path:
    """The schema-2 format, as prealert wrote it before schema 3: each series file holds the Prophet JSON."""
    model = source.forecasters[SOURCE_SERIES]
    state = model.to_dict()
    state.pop("point_model", None)  # schema 2 derived it from the Prophet JSON on load
    text = json.dumps(state)
    digest = hashlib.sha256(text.encode()).hexdigest()
    ids = _ids(series)
    # the detectors as save writes them; then schema-2 series files and manifest over them
    ModelBundle(copy.deepcopy(source.manifest), {}, dict(source.detectors)).save(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(schema_version=2, series={sid: manifest.get("series", {}).get(SOURCE_SERIES, {})
                                              for sid in ids})
    manifest.pop("prophet_files", None)
    for sid in ids:
        name = f"series/{file_stem(sid)}.json"
        (folder / name).write_text(text)
        manifest["series_files"][sid] = name
        manifest["checksums"][name] = digest
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return folder


def fresh(script: str, *args: str) -> str:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          check=True, cwd=ROOT).stdout


def serve(bundle: Path, log: Path) -> None:
    """Time ``bentoml serve`` of ``bundle`` to ready; the RSS of its process tree and largest process."""
    port = free_port()
    t = time.perf_counter()
    proc = start_service(port, bundle=bundle, log_file=log)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", timeout=3600, log_file=log)
        took = time.perf_counter() - t
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        sizes = [p.memory_info().rss / 2**20 for p in procs]
    finally:
        stop_service(proc)
    print(f"\n## bentoml serve of the bundle; {uptime()}\n")
    print(f"- start to ready {took:.0f} s; RSS: tree {sum(sizes):,.0f} MB over {len(sizes)} processes, "
          f"largest (the worker) {max(sizes):,.0f} MB")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--profile-series", type=int, default=500)
    parser.add_argument("--source", type=Path, default=ROOT / "data" / "sample" / "golden_bundle",
                        help=f"bundle whose {SOURCE_SERIES} forecaster is cloned")
    parser.add_argument("--keep", type=Path, help="build the bundles here and keep them")
    parser.add_argument("--top", type=int, default=18, help="profile rows")
    parser.add_argument("--serve", action="store_true", help="also time bentoml serve of the big bundle")
    parser.add_argument("--no-load", action="store_true", help="skip the fresh-process load and profile")
    parser.add_argument("--old-series", type=int, default=1_000,
                        help="series of the schema-2 bundle loaded for comparison (0: none)")
    args = parser.parse_args()
    source = ModelBundle.load(args.source)
    with tempfile.TemporaryDirectory(prefix="bundle-bench-") as tmp:
        where = args.keep or Path(tmp)
        t = time.perf_counter()
        big = build(source, args.series, where / f"bundle-{args.series}")
        size_mb = sum(p.stat().st_size for p in big.rglob("*") if p.is_file()) / 2**20
        one_kb = next((big / "series").iterdir()).stat().st_size / 1024
        print(f"# built {args.series:,} series (schema 3) in {time.perf_counter() - t:.0f} s "
              f"({size_mb:,.0f} MB, one series file {one_kb:,.0f} KB + its Prophet file); {uptime()}",
              flush=True)
        if args.serve:
            serve(big, where / "serve.log")
        if args.no_load:
            return
        print("\n## ModelBundle.load in a fresh process\n")
        print("| format | series | load s (wall) | CPU s | ms a series | RSS after imports MB "
              "| RSS loaded MB | KB a series | peak MB | load average |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        runs = [("schema 3 (point model stored, Prophet lazy)", big)]
        if args.old_series:
            runs.append(("schema 2 (Prophet JSON parsed on load)",
                         build_v2(source, args.old_series, where / f"bundle-v2-{args.old_series}")))
        for label, folder in runs:
            r = json.loads(fresh(MEASURE, str(folder)))
            n, before, after = r["series"], r["rss_before_mb"], r["rss_after_mb"]
            print(f"| {label} | {n:,} | {r['load_s']:.2f} | {r['cpu_s']:.2f} "
                  f"| {r['load_s'] / n * 1e3:.3f} | {before:,.0f} "
                  f"| {after:,.0f} | {(after - before) / n * 1024:,.1f} | {r['peak_rss_mb']:,.0f} "
                  f"| {load_average()} |", flush=True)
        if args.old_series:
            print(f"\n(schema 2 measured on {args.old_series:,} series, not {args.series:,}: "
                  "it costs about 38 ms a series; compare the ms-a-series column)")
        small = build(source, args.profile_series, where / f"bundle-{args.profile_series}")
        print(f"\n## where the load of {args.profile_series:,} series goes (cProfile, cumulative)\n")
        print(fresh(PROFILE, str(small), str(args.top)))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()

"""Training cost on synthetic 1-minute series end to end: feature job + `prealert retrain`, local and Ray.

Run: ``uv run python bench/train_bench.py [--series 10000] [--days 14] [--n-jobs 2]
[--engines local,ray] [--first-engine ray] [--reference 100] [--what retrain|train]``.
Generates ``--series`` seeded
series (10 pod metrics per workload; a workday office-hour peak, a quieter weekend, a trend, an
AR(1) wander and noise). ``--what retrain`` (default), per engine: writes them as a raw export
100 series at a time (never all in memory), runs the feature job, then
:func:`training.retrain.retrain` on its output folder (the workers read their own series) twice
on a temporary MLflow store (the first run makes a champion, the second, the "nightly" run,
trains and replays candidate and champion on the gate window); end to end = feature job +
nightly run, wall and process-tree CPU seconds per phase. ``--what train``: ``train_bundle`` on
the series held in memory plus ``bundle.save`` only, with the process tree's CPU seconds per
series and the summed per-series fit CPU seconds. To compare two versions of the code in one
sitting, run this script under each (``PYTHONPATH=<other checkout>``) back to back.
A local Ray of ``--n-jobs`` CPUs is started first for the Ray engine, its start timed apart.
Peak RSS of the process tree throughout, and per phase (the feature job; the nightly run's
training, and its gate with registration). Then the first
``--reference`` series through ``train_bundle`` with the settings before issue 11 (Prophet's
defaults: every point, 300 uncertainty samples, Stan), with Stan's fit at this release's fit
resolution, and as this release trains them: the same run's per-series cost. Load average before
and after each phase, as the machine is shared: ratios within one run count. No assertions:
numbers only, and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import psutil

from features import schema as s
from training import quiet_libraries
from training.train import TrainConfig, train_bundle

START = datetime(2026, 9, 7, tzinfo=UTC)  # a Monday, 00:00 UTC (09:00 in Seoul)
#: pod-level metrics of the catalogue (so the feature job rolls each up to its workload)
METRICS = ("cpu_pct", "mem_pct", "jvm_heap_pct", "gc_time_pct", "db_pool_pct", "web_worker_pct",
           "apdex", "response_time_ms", "tps", "error_rate_pct")
#: the settings before issue 11: Prophet on all points, all history, a sampled band, Stan's fit
BEFORE = {"fit_max_points": None, "fit_history_days": None, "uncertainty_samples": 300,
          "fit_solver": "stan"}
#: Prophet's own fit (cmdstan) with this release's fit resolution: what the in-process MAP replaces
STAN = {"fit_solver": "stan"}


def synthetic_series(n: int, days: float, step_minutes: int = 1, seed: int = 20261128) -> pl.DataFrame:
    """``n`` series in the training schema with daily (workday peak) and weekly (weekend) cycles."""
    return pl.concat(synthetic_chunks(n, days, n, step_minutes, seed))


def synthetic_chunks(n: int, days: float, chunk: int, step_minutes: int = 1, seed: int = 20261128):
    """:func:`synthetic_series` ``chunk`` series at a time (the same values): never all in memory."""
    rng = np.random.default_rng(seed)
    m = int(days * 1440 / step_minutes)
    minutes = np.arange(m) * step_minutes
    local_hour = (minutes / 60 + 9) % 24  # Seoul is UTC+9
    local_day = (minutes / 60 + 9) // 24
    weekend = (local_day % 7) >= 5  # START is a Monday
    ts = pl.datetime_range(START, START + timedelta(minutes=step_minutes * (m - 1)),
                           timedelta(minutes=step_minutes), time_zone="UTC", eager=True)
    frames = []
    for i in range(n):
        if len(frames) == chunk:
            yield pl.concat(frames).select(list(s.SERIES_SCHEMA))
            frames = []
        peak = rng.uniform(10, 16)
        daily = np.exp(-((local_hour - peak) / rng.uniform(2, 4)) ** 2)
        level, amp = rng.uniform(20, 60), rng.uniform(5, 25)
        wander = np.cumsum(rng.normal(0, 0.05, m))
        y = (level + amp * daily * np.where(weekend, rng.uniform(0.1, 0.5), 1.0)
             + rng.uniform(-1, 1) * minutes / 1440 + wander + rng.normal(0, rng.uniform(0.5, 3), m))
        entity, metric = f"svc-{i // len(METRICS):05d}", METRICS[i % len(METRICS)]
        y = np.clip(y, 0.5, 99.5)  # inside every catalogue range (the feature job checks them)
        y = y / 100 if metric == "apdex" else y * 20 if metric == "response_time_ms" else y
        frames.append(pl.DataFrame({s.TS: ts, s.VALUE: y}).with_columns(
            pl.lit(f"{entity}/{metric}").alias(s.SERIES_ID), pl.lit(entity).alias(s.ENTITY),
            pl.lit(metric).alias(s.METRIC), pl.lit(1, dtype=pl.UInt32).alias(s.N_PODS),
            pl.lit(False).alias(s.FILLED)))
    if frames:
        yield pl.concat(frames).select(list(s.SERIES_SCHEMA))


class PeakRss:
    """Samples the summed RSS of this process and all its descendants (pool or Ray workers)."""

    def __init__(self, every: float = 0.5):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(label: str, series: pl.DataFrame, config: TrainConfig, cores: int) -> dict:
    load_before = os.getloadavg()[0]
    n = series[s.SERIES_ID].n_unique()
    with PeakRss() as rss, tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), tree_cpu_seconds()
        result = train_bundle(series, config)
        result.bundle.save(f"{tmp}/bundle")
        wall, cpu = time.perf_counter() - start, tree_cpu_seconds() - cpu
    entries = result.bundle.manifest["series"].values()
    out = {
        "label": label, "series": n, "wall_s": round(wall, 1),
        "series_per_s_per_core": round(n / wall / cores, 4),
        # the whole process tree (fits, detectors, serialising, the driver): what a run costs
        "cpu_s_per_series": round(cpu / n, 4),
        "fit_cpu_s_per_series": round(float(np.mean([e["fit_cpu_seconds"] for e in entries])), 3),
        "fit_wall_s_per_series": round(float(np.mean([e["fit_seconds"] for e in entries])), 3),
        "fit_step_minutes": sorted({e["fit_step_minutes"] for e in entries}),
        "fallback": sum(e["kind"] != "prophet" for e in entries), "failed": len(result.failed),
        "peak_rss_gb": round(rss.peak / 2**30, 2),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out), flush=True)
    return out


def export_of(series: pl.DataFrame) -> pl.DataFrame:
    """The raw export the feature job reads: one pod per workload on one node."""
    return series.select(s.TS, pl.col(s.ENTITY).alias("service"), (pl.col(s.ENTITY) + "-0").alias("pod"),
                         pl.lit("worker-0").alias("node"), s.METRIC, s.VALUE)


def tree_cpu_seconds() -> float:
    """CPU seconds of this process, its finished children and its live descendants (pool workers)."""
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = child.cpu_times()
            total += c.user + c.system
    return total


class Phases:
    """``echo`` for :func:`retrain`: remembers when each of its messages came, the CPU used and
    the peak RSS of the process tree since the message before (with ``rss``, a :class:`PeakRss`)."""

    def __init__(self, rss: PeakRss | None = None):
        self.rss = rss
        self.marks = [("start", time.perf_counter(), tree_cpu_seconds())]
        self.peaks: list[float] = []
        self._reset()

    def _reset(self) -> None:
        if self.rss is not None:
            self.rss.peak = 0

    def __call__(self, message: str) -> None:
        self.marks.append((message.split(" ", 1)[0].rstrip(":"), time.perf_counter(),
                           tree_cpu_seconds()))
        self.peaks.append(self.rss.peak if self.rss is not None else 0)
        self._reset()

    def seconds(self) -> dict[str, float]:
        """Wall and CPU seconds of training (with the champion's download) and of the gate (with
        registering the candidate), and of the whole run."""
        names = {"training": "train", "gate": "gate_and_register"}
        out = {}
        for (name, at, cpu), (_, until, cpu_until), peak in zip(self.marks, self.marks[1:],
                                                                self.peaks, strict=False):
            if name in names:
                out[f"{names[name]}_s"] = round(until - at, 1)
                out[f"{names[name]}_cpu_s"] = round(cpu_until - cpu, 1)
                if self.rss is not None:
                    out[f"{names[name]}_peak_rss_gb"] = round(peak / 2**30, 2)
        out["retrain_s"] = round(self.marks[-1][1] - self.marks[0][1], 1)
        out["retrain_cpu_s"] = round(self.marks[-1][2] - self.marks[0][2], 1)
        return out


@contextlib.contextmanager
def engine_session(engine: str, n_jobs: int):
    """A local Ray of ``n_jobs`` CPUs for the Ray engine (its start timed and printed), shut down
    after; nothing for the local pool."""
    if engine != "ray":
        yield
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # Ray renices its workers to 15; on a shared machine that measures the neighbours
    os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    began = time.perf_counter()
    ray.init(num_cpus=n_jobs, include_dashboard=False, logging_level="error", log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - began:.1f} s", flush=True)
    try:
        yield
    finally:
        ray.shutdown()


def run_retrain(label: str, n: int, days: float, config: TrainConfig, cores: int,
                first_config: TrainConfig | None = None) -> dict:
    """The scheduled job end to end, twice: the feature job on a raw export, then ``retrain`` for
    the window ending an hour before the newest data (no champion yet: promoted by hand if the
    gate keeps it out), then ``retrain`` for the whole window, which replays candidate and champion.
    End to end = the feature job + that second ("nightly") run; CPU seconds of the process tree.
    ``first_config`` (default ``config``) trains the first run: with the other engine, the two
    runs' training phases (the same series, the window 59 minutes apart) compare the engines at a
    scale where running the whole job twice per engine would not fit in a session.
    The export is written 100 series at a time, the feature job runs in a child process, and
    ``retrain`` reads its folder (its workers read their own series): this process never holds
    every row.
    """
    from features.build import run_build
    from training.registry import champion_version, set_champion
    from training.retrain import RetrainConfig, retrain, writing_registry
    from training.train import SeriesFile

    with PeakRss() as rss, tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["PREALERT_LOCK_FILE"] = f"{tmp}/prealert.lock"
        os.mkdir(f"{tmp}/export")
        for i, part in enumerate(synthetic_chunks(n, days, 100)):
            export_of(part).write_parquet(f"{tmp}/export/part-{i:05d}.parquet")
        load_before = os.getloadavg()[0]
        overall = rss.peak
        rss.peak = 0
        began, cpu = time.perf_counter(), tree_cpu_seconds()
        # in a process of its own, as the scheduler's separate step would: its memory goes
        # back when it ends (the allocator keeps what one process freed), so the later phases'
        # peaks are their own
        job = multiprocessing.get_context("spawn").Process(
            target=run_build, args=(f"{tmp}/export", f"{tmp}/features"), kwargs={"step": "1m"})
        job.start()
        job.join()
        if job.exitcode:
            raise RuntimeError(f"the feature job failed (exit {job.exitcode})")
        features_s, features_cpu_s = time.perf_counter() - began, tree_cpu_seconds() - cpu
        features_peak, overall = rss.peak, max(overall, rss.peak)
        newest = SeriesFile.of(f"{tmp}/features").newest()
        first_config = first_config or config
        first = Phases(rss)
        with engine_session(first_config.engine, first_config.n_jobs):
            retrain(f"{tmp}/features",
                    RetrainConfig(until=newest - timedelta(minutes=59), train=first_config), echo=first)
            first("done")
        # printed now: a later failure (a full disk, say) does not lose the first run's figures
        print(json.dumps({"label": label, "series": n, "features_s": round(features_s, 1),
                          "first_run": {"engine": first_config.engine, **first.seconds()}}), flush=True)
        with writing_registry("bench") as (client, _):
            if champion_version(client) is None:
                set_champion(client, "1", "bench: the first version, so the next run replays a champion")
        overall = max([overall, rss.peak, *first.peaks])
        second = Phases(rss)
        with engine_session(config.engine, config.n_jobs):
            outcome = retrain(f"{tmp}/features", RetrainConfig(train=config), echo=second)
            second("done")
        overall = max([overall, rss.peak, *second.peaks])
        nightly = second.seconds()
        wall = features_s + nightly["retrain_s"]
        cpu = features_cpu_s + nightly["retrain_cpu_s"]
    out = {
        "label": label, "series": n, "features_s": round(features_s, 1),
        "features_cpu_s": round(features_cpu_s, 1),
        "first_run": {"engine": first_config.engine, **first.seconds()}, "nightly_run": nightly,
        "nightly_status": outcome.status, "counts": outcome.counts,
        "end_to_end_s": round(wall, 1), "series_per_s_per_core": round(n / wall / cores, 4),
        "end_to_end_cpu_s_per_series": round(cpu / n, 3),
        "peak_rss_gb": round(overall / 2**30, 2), "features_peak_rss_gb": round(features_peak / 2**30, 2),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--first-engine", choices=("local", "ray"),
                        help="the engine of the first (champion-making) run; default each engine's own")
    parser.add_argument("--reference", type=int, default=100, help="series fitted with the settings before")
    parser.add_argument("--what", default="retrain", choices=("retrain", "train"),
                        help="retrain: feature job + two scheduled runs end to end; train: train_bundle only")
    args = parser.parse_args()
    quiet_libraries()  # as the CLI jobs are: no MLflow table-creation lines in the figures

    made = time.perf_counter()
    # retrain: generated 100 series at a time into the export; train: held in memory
    series = synthetic_series(args.series, args.days) if args.what == "train" else None
    print(f"{args.series} series x {args.days:g} days at 1 minute"
          + (f": {series.height:,} rows, generated in {time.perf_counter() - made:.1f} s"
             if series is not None else "") + f"; {os.cpu_count()} CPUs, load {os.getloadavg()}",
          flush=True)
    results = []
    for engine in args.engines.split(","):
        config = TrainConfig(engine=engine, n_jobs=args.n_jobs)
        if args.what == "retrain":
            first = TrainConfig(engine=args.first_engine, n_jobs=args.n_jobs) if args.first_engine else None
            results.append(run_retrain(engine, args.series, args.days, config, args.n_jobs, first))
        else:
            with engine_session(engine, args.n_jobs):
                results.append(run(engine, series, config, args.n_jobs))
    if args.reference:  # the first series generated: the same values as in the export
        subset = synthetic_series(min(args.reference, args.series), args.days)
        results.append(run("before", subset, TrainConfig(n_jobs=args.n_jobs, forecaster=BEFORE,
                                                         series_time_limit_seconds=None), args.n_jobs))
        results.append(run("stan", subset, TrainConfig(n_jobs=args.n_jobs, forecaster=STAN), args.n_jobs))
        results.append(run("after", subset, TrainConfig(n_jobs=args.n_jobs), args.n_jobs))
    print(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()

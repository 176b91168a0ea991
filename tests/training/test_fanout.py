"""The per-series fan-out: local and Ray engines give the same bundle; a fit that raises or runs past
its time limit is served by the fallback; library logs stay quiet, in the workers too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import pytest

from features import schema as s
from training.fanout import SeriesTimeLimit, batches_of, fan_out, time_limit
from training.forecast.forecaster import SeriesForecaster
from training.train import TrainConfig, train_bundle

ROOT = Path(__file__).resolve().parents[2]
#: manifest entries that say when and how fast, not what was trained
TIMING_KEYS = {"created_at", "fit_seconds_total", "checksums"}
SERIES_TIMING_KEYS = {"fit_seconds", "fit_cpu_seconds"}
#: the run's settings that say where it ran, not what it trained
ENGINE_KEYS = {"engine", "n_jobs"}


def cyclic_series(n_entities: int = 2, metrics: tuple[str, ...] = ("cpu_pct", "heap_pct"),
                  days: float = 3.0, step_minutes: int = 5, seed: int = 11) -> pl.DataFrame:
    """Seeded series in the training schema: a daily cycle, a slow trend and noise."""
    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 9, 21, tzinfo=UTC)
    n = int(days * 1440 / step_minutes)
    ts = [t0 + timedelta(minutes=step_minutes * i) for i in range(n)]
    hours = np.arange(n) * step_minutes / 60
    frames = []
    for e in range(n_entities):
        for metric in metrics:
            y = (50 + 15 * np.sin(2 * np.pi * (hours + rng.uniform(0, 24)) / 24)
                 + rng.uniform(-0.2, 0.2) * hours + rng.normal(0, 2, n))
            frames.append(pl.DataFrame({
                s.SERIES_ID: f"app-{e}/{metric}", s.ENTITY: f"app-{e}", s.METRIC: metric, s.TS: ts,
                s.VALUE: y, s.N_PODS: pl.Series([1] * n, dtype=pl.UInt32), s.FILLED: False,
            }, schema_overrides={s.TS: pl.Datetime("us", "UTC")}))
    return pl.concat(frames)


def small_config(**kw) -> TrainConfig:
    return TrainConfig(holdout_hours=12, forecaster={"min_history_hours": 24}, **kw)


def _bundle_files(folder: Path) -> dict[str, object]:
    """Every file's bytes, and the manifest without its timings."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in TIMING_KEYS:
        manifest.pop(key)
    for key in ENGINE_KEYS:
        manifest["config"].pop(key)
    for entry in manifest["series"].values():
        for key in SERIES_TIMING_KEYS:
            entry.pop(key)
    files = {p.relative_to(folder).as_posix(): p.read_bytes()
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    return {"manifest": manifest, **files}


@pytest.mark.slow
def test_local_and_ray_engines_give_the_same_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # workers run this interpreter
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    import ray

    from training.train import SeriesFile

    series = cyclic_series()
    series.write_parquet(tmp_path / "series.parquet")
    local = train_bundle(series, small_config(engine="local", n_jobs=2, batch_size=1))
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="error", log_to_driver=False)
    try:
        reports = []
        on_ray = train_bundle(series, small_config(engine="ray", batch_size=1),
                              progress=lambda done, total: reports.append((done, total)))
        assert ray.is_initialized(), "an engine must not shut down a Ray it did not start"
        # the Ray workers read their own series from the file (fan_out's read)
        from_file = train_bundle(SeriesFile.of(tmp_path), small_config(engine="ray", batch_size=1))
        # Ray maps 127.0.0.1 to this machine's own address: one node, and it is this machine
        addresses = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
        (node,) = ray.nodes()
        assert node["NodeManagerAddress"] in addresses and node["Resources"]["CPU"] == 2
    finally:
        ray.shutdown()
    # one task per entity (two series each): progress counts series
    assert [d for d, _ in reports] == [2, 4] and {t for _, t in reports} == {4}
    a = _bundle_files(local.bundle.save(tmp_path / "local"))
    b = _bundle_files(on_ray.bundle.save(tmp_path / "ray"))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name
    assert _bundle_files(from_file.bundle.save(tmp_path / "ray_file")) == b
    assert all(v["kind"] == "prophet" for v in a["manifest"]["series"].values())
    assert local.bundle.manifest["config"]["engine"] == "local"
    assert on_ray.bundle.manifest["config"]["engine"] == "ray"


def _poisoned_fit(self, ts, y):
    """Stands in for a cmdstan run that hangs (level 1000) or for a fit that raises (level -1000)."""
    if np.nanmean(y) > 500:
        subprocess.run(["sleep", "60"], check=False)
    if np.nanmean(y) < -500:
        raise FloatingPointError("poisoned")
    return _real_fit_prophet(self, ts, y)


_real_fit_prophet = SeriesForecaster._fit_prophet


def test_a_series_that_hangs_or_raises_is_served_by_the_fallback_and_the_run_goes_on(monkeypatch):
    monkeypatch.setattr(SeriesForecaster, "_fit_prophet", _poisoned_fit)
    series = cyclic_series(n_entities=1, metrics=("cpu_pct", "heap_pct", "gc_pct"))
    series = series.with_columns(pl.when(pl.col(s.METRIC) == "heap_pct").then(pl.col(s.VALUE) + 1000)
                                 .when(pl.col(s.METRIC) == "gc_pct").then(pl.col(s.VALUE) - 2000)
                                 .otherwise(pl.col(s.VALUE)).alias(s.VALUE))
    start = time.perf_counter()
    result = train_bundle(series, small_config(n_jobs=1, series_time_limit_seconds=3))
    assert time.perf_counter() - start < 45, "the hung fit was not cut at its time limit"
    entries = result.bundle.manifest["series"]
    assert result.failed == {}
    assert entries["app-0/cpu_pct"]["kind"] == "prophet"
    assert entries["app-0/heap_pct"]["kind"] == "linear"
    assert "time limit of 3 s" in entries["app-0/heap_pct"]["fallback_reason"]
    assert 3 <= entries["app-0/heap_pct"]["fit_seconds"] < 30
    assert entries["app-0/gc_pct"]["kind"] == "linear"
    assert "FloatingPointError: poisoned" in entries["app-0/gc_pct"]["fallback_reason"]
    assert all(e["fit_seconds"] > 0 and e["fit_cpu_seconds"] >= 0 for e in entries.values())


def test_time_limit_interrupts_python_and_children_but_spares_older_children():
    older = subprocess.Popen(["sleep", "30"])
    try:
        start = time.perf_counter()
        with pytest.raises(SeriesTimeLimit), time_limit(0.5):
            subprocess.run(["sleep", "30"], check=False)
        assert time.perf_counter() - start < 5
        with pytest.raises(SeriesTimeLimit), time_limit(0.5):
            while True:
                sum(range(1000))
        assert older.poll() is None
        with time_limit(5):
            pass
        time.sleep(0.1)  # nothing fires after a block that finished in time
    finally:
        older.kill()
        older.wait()


def test_time_limit_works_off_the_main_thread():
    caught = []

    def work():
        try:
            with time_limit(0.3):
                while True:
                    sum(range(1000))
        except SeriesTimeLimit:
            caught.append(True)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert caught == [True]


def test_fan_out_keeps_the_order_of_its_items_and_refuses_an_unknown_engine():
    items = [(f"k{i}", i) for i in range(10)]
    assert fan_out(_square, items, n_jobs=1, batch_size=3) == [i * i for i in range(10)]
    assert [len(b) for b in batches_of(items, workers=2)] == [1] * 10
    assert [len(b) for b in batches_of(items, workers=1, batch_size=4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="unknown engine"):
        fan_out(_square, items, engine="spark")
    with pytest.raises(ValueError, match="choose one of local, ray"):
        TrainConfig(engine="dask")


def _square(key, value):
    return value * value


QUIET_RUN = """
import sys
sys.path.insert(0, {tests!r})
from training.fanout import fan_out
from training.train import TrainConfig, train_bundle
from test_fanout import cyclic_series, small_config
train_bundle(cyclic_series(n_entities=1), small_config(n_jobs=2), verbose={verbose})
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_library_logs_are_off_unless_verbose_in_the_workers_too(verbose):
    code = QUIET_RUN.format(tests=str(Path(__file__).parent), verbose=verbose)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    logs = out.stdout + out.stderr
    if verbose:  # Prophet's INFO from the fits in the workers (3 days: no weekly seasonality)
        assert "Disabling weekly seasonality" in logs, logs[-2000:]
    else:
        assert "cmdstanpy" not in logs and "plotly" not in logs and "INFO" not in logs, logs[-2000:]

"""The promotion gate on the alert replay; the scheduled retrain: lock, retry, killed runs, rollback."""

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from mlflow import MlflowClient
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from features import schema as s
from serving.cli import app
from training import registry
from training.bundle import ModelBundle
from training.evaluation.gate import GateConfig, judge
from training.lock import LockBusy, RegistryLock
from training.registry import CHAMPION, MODEL_NAME, champion_version, use_experiment
from training.retrain import RetrainConfig, lock_path, retrain, writing_registry
from training.train import TrainConfig, train_bundle

START = datetime(2026, 9, 1, tzinfo=UTC)
GATE_HOURS = 48


def synthetic(days: int = 10, step: int = 15, seed: int = 7) -> pl.DataFrame:
    """Two workloads x two metrics: a business-hours plateau each day, 15-minute step."""
    rng = np.random.default_rng(seed)
    n = days * 1440 // step
    ts = [START + timedelta(minutes=step * i) for i in range(n)]
    hours = np.arange(n) * step / 60
    day = np.clip(1.8 * np.sin(2 * np.pi * (hours - 8) / 24), -1, 1)
    frames = []
    for entity, amp in (("shop-a", 1.0), ("shop-b", 0.9)):
        for metric, base, scale in (("jvm_heap_pct", 70.0, 18.0), ("cpu_pct", 62.0, 16.2)):
            frames.append(pl.DataFrame({
                s.SERIES_ID: s.series_id(entity, metric), s.ENTITY: entity, s.METRIC: metric,
                s.TS: ts, s.VALUE: base + amp * scale * day + rng.normal(0, 0.7, n),
                s.N_PODS: pl.Series([3] * n, dtype=pl.UInt32), s.FILLED: False,
            }).with_columns(pl.col(s.TS).dt.cast_time_unit("us")))
    return pl.concat(frames)


@pytest.fixture(scope="module")
def series():
    logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
    return synthetic()


@pytest.fixture(scope="module")
def gate_start(series):
    return series[s.TS].max() + timedelta(microseconds=1) - timedelta(hours=GATE_HOURS)


@pytest.fixture(scope="module")
def bundles(series, gate_start):
    """Candidates trained before the gate window: as deployed, and three ways of going wrong."""
    train = series.filter(pl.col(s.TS) < gate_start)
    shuffled = train.with_columns(pl.col(s.VALUE).shuffle(seed=1).over(s.SERIES_ID))
    lag1 = lambda f: float(np.corrcoef(f[s.VALUE][:-1], f[s.VALUE][1:])[0, 1])  # noqa: E731
    one = lambda f: f.filter(pl.col(s.SERIES_ID) == "shop-a/jvm_heap_pct").sort(s.TS)  # noqa: E731
    assert lag1(one(train)) > 0.9 and abs(lag1(one(shuffled))) < 0.1  # the shuffled data
    return {
        "good": train_bundle(train, TrainConfig()).bundle,
        "shuffled": train_bundle(shuffled, TrainConfig()).bundle,
        # one daily Fourier term cannot draw the plateau: a plausible but worse model
        "coarse": train_bundle(train, TrainConfig(forecaster={"daily_fourier_order": 1})).bundle,
        # three days of history: an older, weaker champion
        "short": train_bundle(train.filter(pl.col(s.TS) >= gate_start - timedelta(days=3)),
                              TrainConfig(holdout_hours=12,
                                          forecaster={"min_history_hours": 24})).bundle,
    }


def narrower(bundle: ModelBundle, entity: str) -> ModelBundle:
    """The bundle `--include entity` gives (each series is fitted on its own, so the same models)."""
    keep = {k: v for k, v in bundle.forecasters.items() if k.startswith(entity + "/")}
    return ModelBundle(bundle.manifest, keep, {entity: bundle.detectors[entity]})


GATE = GateConfig(window_hours=GATE_HOURS)


@pytest.mark.slow
def test_gate_better_is_promoted(bundles, series, gate_start):
    d = judge(bundles["good"], bundles["short"], series, gate_start, GATE)
    assert d.promote, d.reason
    assert d.reason.startswith("no worse than the champion")
    assert set(d.scores["model"]) == {"candidate", "candidate on common", "champion on common"}


@pytest.mark.slow
def test_gate_replays_in_parallel_as_in_one_process(bundles, series, gate_start):
    """Two worker processes judge as one does (scores equal up to the last bits of BLAS sums)."""
    one = judge(bundles["good"], bundles["short"], series, gate_start, GATE)
    two = judge(bundles["good"], bundles["short"], series, gate_start, GATE, n_jobs=2)
    assert (two.promote, two.reason, two.skipped) == (one.promote, one.reason, one.skipped)
    keys = ["model", "predictor", "horizon"]
    assert_frame_equal(two.scores.sort(keys), one.scores.sort(keys), rel_tol=1e-9)


def test_gate_reading_the_series_file_in_its_workers_judges_as_from_memory(bundles, series,
                                                                           gate_start, tmp_path):
    """The workers build the cases from the feature job's file themselves: the same decision
    and scores, candidate and champion on the same cases."""
    from training.train import SeriesFile

    series.write_parquet(tmp_path / "series.parquet", row_group_size=200)
    source = SeriesFile.of(tmp_path).within(start=series[s.TS].min())
    for champion in (bundles["short"], bundles["coarse"]):
        memory = judge(bundles["good"], champion, series, gate_start, GATE)
        file = judge(bundles["good"], champion, source, gate_start, GATE, n_jobs=2)
        assert (file.promote, file.reason, file.skipped) == (memory.promote, memory.reason,
                                                             memory.skipped)
        keys = ["model", "predictor", "horizon"]
        assert_frame_equal(file.scores.sort(keys), memory.scores.sort(keys), rel_tol=1e-9)
        assert "champion on common" in set(memory.scores["model"])


def test_gate_scores_tallied_in_its_workers_are_the_summary_of_its_replay_rows(bundles, series,
                                                                              gate_start):
    """The gate keeps tallies, never the replay's rows: its scores are `summarize` of those rows
    (the figures `prealert evaluate` reports), up to the order of float sums."""
    from training.evaluation.gate import gate_cases
    from training.evaluation.metrics import summarize
    from training.evaluation.replay import replay_given

    good = bundles["good"]
    cases = gate_cases(series, set(good.forecasters), gate_start, GATE)
    rows = pl.concat([f for c in cases if (f := replay_given(
        c, good.forecasters[c.name.rsplit(" ", 2)[0]], good.alert_rule, GATE.replay())).height],
        how="diagonal_relaxed")
    keys = ["predictor", "horizon"]
    gate = judge(good, None, series, gate_start, GATE).scores.drop("model")
    assert_frame_equal(gate.sort(keys), summarize(rows, GATE.every_minutes).sort(keys),
                       rel_tol=1e-12, abs_tol=1e-12)
    # onsets are counted as evaluate counts them (the gate's replay once left them out: "0 onsets")
    assert gate.filter(pl.col("predictor") == "prealert")["onsets"].sum() > 0


@pytest.mark.slow
def test_gate_worse_is_kept(bundles, series, gate_start):
    d = judge(bundles["coarse"], bundles["good"], series, gate_start, GATE)
    # it beats predict_linear, and the champion at H=60, but not at H=120: every horizon counts
    assert not d.promote and d.reason.startswith("worse than the champion: F1"), d.reason
    assert "at H=120" in d.reason and "at H=60" not in d.reason


@pytest.mark.slow
def test_gate_shuffled_training_data_is_kept_whatever_the_champion(bundles, series, gate_start):
    for champion in (bundles["good"], None):
        d = judge(bundles["shuffled"], champion, series, gate_start, GATE)
        assert not d.promote and d.reason.startswith("loses to predict_linear"), d.reason
        evidence = r"\(on \d+ checks with a crossing due, \d+ crossings, \d+ onsets\)"
        assert re.search(evidence, d.reason), d.reason


@pytest.mark.slow
def test_gate_narrower_coverage_is_kept_unless_shrink_is_allowed(bundles, series, gate_start):
    subset = narrower(bundles["good"], "shop-a")
    d = judge(subset, bundles["good"], series, gate_start, GATE)
    assert not d.promote and "covers 2 of the champion's 4 series" in d.reason
    assert "--allow-shrink" in d.reason
    shrink = judge(subset, bundles["good"], series, gate_start,
                   GateConfig(window_hours=GATE_HOURS, allow_shrink=True))
    assert shrink.promote and "2 series dropped" in shrink.reason


@pytest.mark.slow
def test_gate_needs_crossings_to_judge_on(bundles, series, gate_start):
    calm = series.with_columns(pl.when(pl.col(s.TS) >= gate_start).then(50.0)
                               .otherwise(pl.col(s.VALUE)).alias(s.VALUE))
    d = judge(bundles["good"], None, calm, gate_start, GateConfig(window_hours=GATE_HOURS,
                                                                    quantiles=()))
    assert not d.promote and "no crossing" in d.reason


# --- the lock ------------------------------------------------------------------------------

def _write_lock(path, pid, host, started):
    path.write_text(json.dumps({"pid": pid, "host": host, "started_at": started.isoformat(),
                                "command": "test"}))


def test_lock_is_exclusive_and_released(tmp_path):
    path = tmp_path / "x.lock"
    with RegistryLock(path) as lock:
        assert lock.read().pid == os.getpid()
        with pytest.raises(LockBusy, match=f"pid {os.getpid()}"):
            RegistryLock(path).acquire()
    assert not path.exists()


def test_stale_locks_are_cleared_live_ones_are_not(tmp_path):
    path = tmp_path / "x.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = datetime.now(UTC)
    _write_lock(path, dead.pid, socket.gethostname(), now)
    with RegistryLock(path) as lock:
        assert "is gone" in lock.cleared
    _write_lock(path, 1, "another-pod", now - timedelta(hours=7))
    with RegistryLock(path, max_age=timedelta(hours=6)) as lock:
        assert "older than 6 h" in lock.cleared
    _write_lock(path, 1, "another-pod", now - timedelta(minutes=5))
    with pytest.raises(LockBusy, match="another-pod"):
        RegistryLock(path).acquire()
    path.write_text('{"pid": ')  # half-written by a killed run, long ago
    os.utime(path, (0, 0))
    with RegistryLock(path) as lock:
        assert "unreadable" in lock.cleared


# --- the scheduled job through MLflow -------------------------------------------------------

@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(uri, uri)


def test_killed_runs_are_marked_failed_at_the_next_start(store):
    use_experiment()
    exp = store.get_experiment_by_name("prealert")
    orphan = store.create_run(exp.experiment_id).info.run_id  # a `kill -9`ed train leaves this
    assert store.get_run(orphan).info.status == "RUNNING"
    with writing_registry("test") as (_, notes):
        assert lock_path().exists()
    assert store.get_run(orphan).info.status == "FAILED"
    assert "killed" in store.get_run(orphan).data.tags["prealert.failed_reason"]
    assert any(orphan in n for n in notes)
    assert not lock_path().exists()


@pytest.mark.slow
def test_retrain_promotes_a_retry_changes_nothing_and_narrower_is_kept(series, store, tmp_path):
    config = RetrainConfig(history_days=10, gate=GATE)
    first = retrain(series, config, echo=lambda _: None)
    assert first.status == "promoted" and first.champion_before is None, first.reason
    assert first.counts == {"series_fitted": 4, "series_fallback": 0, "series_failed": 0}
    line = first.summary()
    assert line.startswith("prealert retrain: promoted v1") and "\n" not in line
    run = store.get_run(first.run_id)
    tags = run.data.tags
    assert tags["prealert.data_fingerprint"]
    assert tags["prealert.code_version"].startswith(("git ", "prealert "))
    assert tags["prealert.series_fitted"] == "4" and tags["prealert.series_failed"] == "0"
    assert ".." in tags["prealert.training_window"] and tags["prealert.decision"] == "promoted"

    again = retrain(series, config, echo=lambda _: None)  # the scheduler retries the same night
    assert again.reused and again.run_id == first.run_id and again.version == "1"
    exp = store.get_experiment_by_name("prealert")
    assert len(store.search_runs([exp.experiment_id])) == 1
    assert len(store.search_model_versions(f"name='{MODEL_NAME}'")) == 1
    assert "retry of a decided window" in again.summary()

    features = tmp_path / "features"
    features.mkdir()
    series.write_parquet(features / "series.parquet")
    cli = CliRunner().invoke(app, ["retrain", "--features", str(features), "--include", "shop-a",
                                   "--history-days", "10", "--gate-hours", str(GATE_HOURS)])
    assert cli.exit_code == 3, cli.output  # kept the champion
    assert "prealert retrain: kept champion v1, registered v2: covers 2 of" in cli.output
    assert champion_version(store) == "1"

    # by hand: promote the narrower version, then roll back to the gate's choice
    cli = CliRunner().invoke(app, ["promote", "2"])
    assert cli.exit_code == 0 and "@champion: v2 (was v1)" in cli.output
    cli = CliRunner().invoke(app, ["rollback"])
    assert cli.exit_code == 0 and "@champion: v1 (rolled back from v2)" in cli.output
    assert store.get_model_version_by_alias(MODEL_NAME, CHAMPION).version == 1
    cli = CliRunner().invoke(app, ["rollback"])
    assert cli.exit_code == 2 and "first champion on record" in cli.output
    assert CliRunner().invoke(app, ["promote", "9"]).exit_code == 2

    with RegistryLock(lock_path()):  # a live run holds the lock: the scheduler sees 4
        cli = CliRunner().invoke(app, ["retrain", "--features", str(features), "--history-days",
                                       "10", "--gate-hours", str(GATE_HOURS)])
    assert cli.exit_code == 4 and "another run holds" in cli.output

    # a disk too full for the bundle's copies: the run fails before MLflow copies anything
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "SPACE_MARGIN_BYTES", 2**62)
        cli = CliRunner().invoke(app, ["retrain", "--features", str(features), "--history-days",
                                       "9", "--gate-hours", str(GATE_HOURS)])
    assert cli.exit_code == 2 and "not enough free space to register the bundle" in cli.output
    assert "@champion is unchanged" in cli.output and "Traceback" not in cli.output
    assert champion_version(store) == "1"
    assert len(store.search_model_versions(f"name='{MODEL_NAME}'")) == 2
    failed = store.search_runs([exp.experiment_id], "attributes.status = 'FAILED'")
    assert len(failed) == 1 and failed[0].data.tags["prealert.job"] == "retrain"


def test_free_space_is_summed_per_filesystem(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    size = int(free * 0.6)
    registry.check_free_space(size, [tmp_path, None])  # one copy fits; a remote store is skipped
    with pytest.raises(registry.NotEnoughSpace, match="GiB free on that filesystem"):
        registry.check_free_space(size, [tmp_path / "a", tmp_path / "b" / "not-yet"])

"""The scheduled retrain: a rolling window, the registry lock, idempotent retries, the gated promotion."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import polars as pl
from mlflow import MlflowClient

from features import schema as s
from training.bundle import ModelBundle
from training.evaluation.gate import GateConfig, judge
from training.lock import RegistryLock
from training.progress import MlflowProgress, ProgressBar, both
from training.registry import (
    EXPERIMENT,
    MODEL_NAME,
    champion_version,
    code_version,
    default_store,
    load_champion,
    log_training,
    register_bundle,
    set_champion,
    tracking_uri,
    use_experiment,
)
from training.threshold import ProbabilityCalibration
from training.train import SeriesFile, TrainConfig, fingerprint, select_training_data, train_bundle

PROMOTED, KEPT = "promoted", "kept"
KEY_TAG = "prealert.retrain_key"


@dataclass
class RetrainConfig:
    """The scheduled job: train on ``history_days`` before the gate window, judge on the window."""

    history_days: float = 14.0  # the rolling window of the export, gate window included
    until: datetime | None = None  # the window ends here (exclusive); default: the newest data
    train: TrainConfig = field(default_factory=TrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    lock_max_age_hours: float = 6.0  # a lock older than this is left behind by a killed run

    def as_params(self) -> dict[str, str]:
        return {"history_days": str(self.history_days), **self.train.as_params(),
                **self.gate.as_params()}


@dataclass
class RetrainOutcome:
    status: str  # PROMOTED or KEPT
    run_id: str
    version: str | None  # the candidate's registered version
    champion_before: str | None
    reason: str
    counts: dict[str, int]
    window: dict[str, str]  # start, gate_start, end (ISO)
    reused: bool = False  # a retry of a window already decided: nothing was trained or moved
    notes: list[str] = field(default_factory=list)  # stale lock cleared, killed runs marked
    seconds: float = 0.0

    def summary(self) -> str:
        """The one line a scheduler's log keeps."""
        what = (f"promoted v{self.version}" + (f" (was v{self.champion_before})"
                                               if self.champion_before else "")
                if self.status == PROMOTED else
                f"kept champion {'v' + self.champion_before if self.champion_before else '(none)'}"
                f", registered v{self.version}")
        counts = ", ".join(f"{v} {k.removeprefix('series_')}" for k, v in self.counts.items())
        again = "retry of a decided window, nothing redone; " if self.reused else ""
        return (f"prealert retrain: {what}: {again}{self.reason} | window {self.window['start']} .. "
                f"{self.window['end']}, gate from {self.window['gate_start']} | series: {counts} | "
                f"run {self.run_id} | {self.seconds:.0f} s")


def lock_path() -> Path:
    """``PREALERT_LOCK_FILE``, else beside the tracking store (a SQLite file or a local folder)."""
    env = os.environ.get("PREALERT_LOCK_FILE")
    if env:
        return Path(env)
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return db.with_name(db.name + ".lock")
    if uri.startswith("file://") or "://" not in uri:
        return Path(uri.removeprefix("file://")) / "prealert.lock"
    return default_store() / "prealert.lock"  # a remote server: set PREALERT_LOCK_FILE on shared storage


def mark_killed_runs(client: MlflowClient) -> list[str]:
    """Runs left RUNNING by a killed writer become FAILED, their versions tagged as orphans.

    Call it holding the lock: every writer of the experiment holds it, so a RUNNING run then
    belongs to nobody.
    """
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    killed = []
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
        rid = run.info.run_id
        client.set_tag(rid, "prealert.failed_reason", "killed: found RUNNING at the next start")
        client.set_terminated(rid, "FAILED")
        for mv in client.search_model_versions(f"name='{MODEL_NAME}' and run_id='{rid}'"):
            client.set_model_version_tag(MODEL_NAME, mv.version, "prealert.orphan", "run killed")
        killed.append(rid)
    return killed


@contextmanager
def writing_registry(command: str, max_age: timedelta = timedelta(hours=6)
                     ) -> Iterator[tuple[MlflowClient, list[str]]]:
    """Hold the registry lock; first mark killed runs FAILED and clear their staged bundles.

    Yields the client and notes on what was cleaned up. Raises
    :class:`~training.lock.LockBusy` when a live run holds the lock.
    """
    client = use_experiment(EXPERIMENT)
    path = lock_path()
    with RegistryLock(path, max_age, command) as lock:
        notes = [lock.cleared] if lock.cleared else []
        killed = mark_killed_runs(client)
        if killed:
            notes.append(f"marked {len(killed)} killed run(s) FAILED: {', '.join(killed)}")
        staging = staging_dir()
        if staging.exists():  # temp bundles of killed runs
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        yield client, notes


def staging_dir() -> Path:
    path = lock_path()
    return path.with_name(path.name + ".staging")


def windows(series: pl.DataFrame | SeriesFile, config: RetrainConfig
            ) -> tuple[datetime, datetime, datetime]:
    """``(start, gate_start, end)`` of the rolling window; ``end`` is exclusive."""
    newest = series.newest() if isinstance(series, SeriesFile) else series[s.TS].max()
    if newest is None:
        raise ValueError("no series to retrain on")
    end = config.until or (newest + timedelta(microseconds=1))
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    return (end - timedelta(days=config.history_days),
            end - timedelta(hours=config.gate.window_hours), end)


def retrain_key(window: tuple[datetime, ...], data_fingerprint: str, config: RetrainConfig) -> str:
    """The same window, data, config and code give the same key: a retry finds its run by it."""
    blob = json.dumps({"window": [w.isoformat() for w in window], "data": data_fingerprint,
                       "config": config.as_params(), "code": code_version()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _decided(client: MlflowClient, key: str) -> mlflow.entities.Run | None:
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`{KEY_TAG}` = '{key}' and "
                              "attributes.status = 'FINISHED'", max_results=1)
    return runs[0] if runs else None


def served_calibrations(bundle: ModelBundle | None, series_ids: set[str]
                        ) -> dict[str, dict[float, ProbabilityCalibration]]:
    """The calibrations (alarm levels) ``bundle`` serves for each of ``series_ids`` it holds,
    by horizon: read from the series files only, no Prophet model is parsed."""
    if bundle is None:
        return {}
    return {sid: dict(bundle.forecasters[sid].calibrations_)
            for sid in sorted(series_ids & set(bundle.forecasters))
            if bundle.forecasters[sid].calibrations_}


def retrain(series: pl.DataFrame | SeriesFile | str | Path, config: RetrainConfig | None = None,
            echo=print) -> RetrainOutcome:
    """Train a candidate on the window before the gate, judge it against ``@champion``, promote or keep.

    ``series`` is a feature job's output folder (or its ``series.parquet``): training's and the
    gate's workers read their own series from it, so no process holds every row; or a
    feature-job frame (:func:`features.build.load_series`) held in memory. Under the registry
    lock; a retry of a window already decided returns that decision and changes nothing.
    """
    config = config or RetrainConfig()
    started = time.perf_counter()
    if isinstance(series, str | Path):
        series = SeriesFile.of(series)
    start, gate_start, end = windows(series, config)
    train_config = replace(config.train, until=None)
    if isinstance(series, SeriesFile):
        data = series.within(start, end)
        scoped = select_training_data(data, train_config)
        training_data = data.within(end=gate_start)
        nothing_before = not scoped.within(end=gate_start).ids()
    else:
        data = series.filter((pl.col(s.TS) >= start) & (pl.col(s.TS) < end))
        scoped = select_training_data(data, train_config)
        training_data = data.filter(pl.col(s.TS) < gate_start)
        nothing_before = scoped.filter(pl.col(s.TS) < gate_start).is_empty()
    if nothing_before:
        raise ValueError(f"no data before the gate window ({gate_start.isoformat()}) to train on")
    window = {"start": start.isoformat(timespec="minutes"),
              "gate_start": gate_start.isoformat(timespec="minutes"),
              "end": end.isoformat(timespec="minutes")}
    key = retrain_key((start, gate_start, end), fingerprint(scoped), config)
    max_age = timedelta(hours=config.lock_max_age_hours)
    with writing_registry("prealert retrain", max_age) as (client, notes):
        for note in notes:
            echo(note)
        before = champion_version(client)
        done = _decided(client, key)
        if done is not None:
            tags = done.data.tags
            return RetrainOutcome(tags.get("prealert.decision", KEPT), done.info.run_id,
                                  tags.get("prealert.version"), before,
                                  tags.get("prealert.reason", ""),
                                  {k: int(float(done.data.metrics.get(k, 0))) for k in
                                   ("series_fitted", "series_fallback", "series_failed")},
                                  window, reused=True, notes=notes,
                                  seconds=time.perf_counter() - started)
        run_tags = {"prealert.job": "retrain", KEY_TAG: key, "prealert.host": socket.gethostname(),
                    "prealert.pid": str(os.getpid()), "prealert.gate_window":
                    f"{window['gate_start']} .. {window['end']}"}
        with mlflow.start_run(run_name=f"retrain {window['end']}", tags=run_tags) as run:
            mlflow.log_params({"history_days": config.history_days, **config.gate.as_params()})
            ids = scoped.ids() if isinstance(scoped, SeriesFile) else \
                scoped[s.SERIES_ID].unique().to_list()
            echo(f"training {len(ids)} series on {window['start']} .. "
                 f"{window['gate_start']} ...")
            progress = both(ProgressBar(), MlflowProgress(client, run.info.run_id))
            # the candidate's models go to disk as they are fitted, the champion's are read
            # from disk as the gate replays them: memory does not grow with the series count
            workdir = Path(tempfile.mkdtemp(prefix="candidate-", dir=staging_dir()))
            champion = (load_champion(staging_dir() / "champion", series="lazy") if before
                        else None)
            # the candidate's alarm levels are shrunk toward the champion's: a daily retrain
            # on a quiet day does not swing them
            result = train_bundle(training_data, train_config, progress=progress, workdir=workdir,
                                  previous=served_calibrations(champion, set(ids)))
            tags = log_training(result, train_config)
            counts = {k.removeprefix("prealert."): int(v) for k, v in tags.items()
                      if k.startswith("prealert.series_")}
            echo(f"gate: replaying the candidate{' and champion v' + before if before else ''} on "
                 f"{window['gate_start']} .. {window['end']} ...")
            decision = judge(result.bundle, champion, data, gate_start, config.gate,
                             engine=train_config.engine, n_jobs=train_config.n_jobs)
            if decision.scores.height:
                mlflow.log_table(decision.scores.to_pandas(), "gate.json")
            version = register_bundle(result.bundle, staging_dir())
            shutil.rmtree(workdir, ignore_errors=True)
            if decision.promote:
                set_champion(client, version, decision.reason)
            status = PROMOTED if decision.promote else KEPT
            mlflow.set_tags({"prealert.decision": status, "prealert.version": version,
                             "prealert.reason": decision.reason[:4900],
                             "prealert.gate_skipped": json.dumps(decision.skipped)[:4900]})
    return RetrainOutcome(status, run.info.run_id, version, before, decision.reason, counts, window,
                          notes=notes, seconds=time.perf_counter() - started)

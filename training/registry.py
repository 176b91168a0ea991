"""MLflow as the system of record: log a training run, register its bundle, move ``@champion``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.bundle import ModelBundle

# BundleModel stays importable from here: registered versions' copied pyfunc_entry.py import it
from training.mlflow_model import PYFUNC_SIGNATURE, BundleModel, input_example  # noqa: F401
from training.plots import log_crossing_plots
from training.run_record import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    HOLDOUT_SCORE_KEY,
    log_holdout_scores,
    run_name,
)
from training.train import TrainConfig, TrainResult

MODEL_NAME = "prealert"
EXPERIMENT = "prealert"
CHAMPION = "champion"


def default_store() -> Path:
    """The local store: ``./mlflow`` under the current directory (the project root)."""
    return Path.cwd() / "mlflow"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store under ``./mlflow``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{default_store() / 'mlflow.db'}"


def use_experiment(name: str = EXPERIMENT) -> MlflowClient:
    """Point MLflow at the store and the experiment (created with local artifacts if new)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(name) is None:
        artifacts = None
        if uri.startswith("sqlite:///"):  # keep artifacts beside a local database
            artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        mlflow.create_experiment(name, artifact_location=artifacts,
                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    experiment = mlflow.set_experiment(name)
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # a store made before the tag was set
        mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return MlflowClient(uri, uri)


def _use_store() -> MlflowClient:
    return use_experiment(EXPERIMENT)


def series_counts(result: TrainResult) -> dict[str, int]:
    """Fitted (Prophet), fallback (any simpler model) and failed (no model) series of a run."""
    kinds = [entry.get("kind") for entry in result.bundle.manifest.get("series", {}).values()]
    return {"series_fitted": sum(k == "prophet" for k in kinds),
            "series_fallback": sum(k != "prophet" for k in kinds),
            "series_failed": len(result.failed)}


def code_version() -> str:
    """The git commit this code runs from (``+dirty`` with local changes), else the package version."""
    import subprocess
    from importlib.metadata import version

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"prealert {version('prealert')}"
    return f"git {commit}{'+dirty' if dirty else ''}"


def log_training(result: TrainResult, config: TrainConfig) -> dict[str, str]:
    """Log a training result into the active run: params, counts, backtest, and the tags it says.

    Returns the tags: training window, data fingerprint, code version and the series counts.
    """
    manifest = result.bundle.manifest
    mlflow.log_params(config.as_params())
    counts = series_counts(result)
    for key, value in counts.items():
        mlflow.log_metric(key, value)
    mlflow.log_metric(HOLDOUT_SCORE_KEY, result.score)
    log_holdout_scores(result.backtest)
    mlflow.log_table(result.backtest.to_pandas(), "backtest.json")
    # each metric kind's pooled alarm level per horizon, the prior its series' levels shrank toward
    mlflow.log_dict(manifest.get("alarm_pools") or {}, "alarm_pools.json")
    log_crossing_plots(result.bundle, n=3, margins=result.crossing_margins)
    window = manifest.get("training_window", {})
    tags = {"prealert.training_window": f"{window.get('start')} .. {window.get('end')}",
            "prealert.data_fingerprint": str(manifest.get("data_fingerprint")),
            "prealert.code_version": code_version(),
            **{f"prealert.{k}": str(v) for k, v in counts.items()}}
    mlflow.set_tags(tags)
    return tags


def register_bundle(bundle: ModelBundle, staging: Path | None = None) -> str:
    """Log the bundle into the active run and register it as a new version (never promoted here).

    ``staging`` is where the bundle is written first (a temporary folder if None).
    """
    with tempfile.TemporaryDirectory(prefix="prealert-bundle-", dir=staging) as tmp:
        bundle_dir = bundle.save(Path(tmp) / "bundle")
        # MLflow copies the bundle into a temporary model folder, then into the artifact store
        check_free_space(folder_bytes(bundle_dir), [Path(tempfile.gettempdir()), artifact_dir()])
        # MLflow prints "Registered model ... already exists. Creating a new version" and
        # "Created version" straight to stderr: into our log (shown with --verbose)
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stderr(chatter):
                info = mlflow.pyfunc.log_model(
                    name="bundle", python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                    artifacts={"bundle": str(bundle_dir)}, signature=PYFUNC_SIGNATURE,
                    input_example=input_example(bundle),
                    registered_model_name=MODEL_NAME,
                )
        finally:
            for line in chatter.getvalue().splitlines():
                logging.getLogger(__name__).info(line)
    return str(info.registered_model_version)


class NotEnoughSpace(RuntimeError):
    """A copy of the bundle would not fit: nothing was registered, ``@champion`` is untouched."""


#: free space kept on a filesystem beyond what the copies need (logs, the store's own writes)
SPACE_MARGIN_BYTES = 256 * 2**20


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder``."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def artifact_dir() -> Path | None:
    """The active run's artifact folder when it is on this machine (None for a remote store)."""
    uri = mlflow.get_artifact_uri()
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


def check_free_space(size: int, places: list[Path | None]) -> None:
    """Raise :class:`NotEnoughSpace` unless each filesystem holds a copy of ``size`` bytes per place on it.

    Checked before MLflow starts copying, so a full disk fails the run with a clear message
    instead of an ``[Errno 28]`` halfway through a registration.
    """
    need: dict[int, tuple[int, Path, list[str]]] = {}
    for place in places:
        if place is None:
            continue
        existing = Path(place)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        device = existing.stat().st_dev
        total, where, names = need.get(device, (0, existing, []))
        need[device] = (total + size, where, [*names, str(place)])
    for total, where, names in need.values():
        free = shutil.disk_usage(where).free
        if free < total + SPACE_MARGIN_BYTES:
            raise NotEnoughSpace(
                f"not enough free space to register the bundle: {total / 2**30:.2f} GiB of copies "
                f"({', '.join(names)}) plus {SPACE_MARGIN_BYTES / 2**20:.0f} MiB to spare, but "
                f"{free / 2**30:.2f} GiB free on that filesystem; nothing was registered and "
                "@champion is unchanged (free space or set TMPDIR / the artifact store elsewhere)")


def log_and_register(result: TrainResult, config: TrainConfig, staging: Path | None = None,
                     tags: dict[str, str] | None = None) -> tuple[str, str]:
    """One run for a training result and its bundle registered as a new version: ``(run, version)``.

    It never moves ``@champion``: only the gate (:func:`training.retrain.retrain`) and a human
    (:func:`promote_version`, :func:`rollback`) do.
    """
    _use_store()
    with mlflow.start_run(run_name=run_name(result),
                          tags={"prealert.job": "train", **(tags or {})}) as run:
        log_training(result, config)
        version = register_bundle(result.bundle, staging)
        mlflow.set_tags({"prealert.version": version, "prealert.decision": "registered"})
    return run.info.run_id, version


def champion_version(client: MlflowClient) -> str | None:
    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    except MlflowException:
        return None


HISTORY_TAG = "prealert.champion_history"


def champion_history(client: MlflowClient) -> list[str]:
    """The versions that have been ``@champion``, oldest first (what ``rollback`` walks back)."""
    try:
        tags = client.get_registered_model(MODEL_NAME).tags
    except MlflowException:
        return []
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def set_champion(client: MlflowClient, version: str, why: str) -> None:
    """Move ``@champion`` to ``version`` and remember it; every promotion goes through here."""
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    history = [v for v in champion_history(client) if v != version] + [version]
    client.set_registered_model_tag(MODEL_NAME, HISTORY_TAG, json.dumps(history[-50:]))
    client.set_model_version_tag(MODEL_NAME, version, "prealert.promoted",
                                 f"{datetime.now(UTC).isoformat(timespec='seconds')}: {why}")


def check_promotable(client: MlflowClient, version: str) -> None:
    """Raise ``LookupError`` unless ``version`` exists, its run finished, and its bundle loads."""
    try:
        mv = client.get_model_version(MODEL_NAME, version)
    except MlflowException as exc:
        raise LookupError(f"no version {version} of model '{MODEL_NAME}' in {tracking_uri()}") from exc
    status = client.get_run(mv.run_id).info.status if mv.run_id else "FINISHED"
    if status != "FINISHED":
        raise LookupError(f"version {version} comes from run {mv.run_id}, which is {status} "
                          "(killed or failed): refusing to serve it")
    load_version(version)  # raises on a missing or altered bundle file


def load_version(version: str, dst: str | Path | None = None, *, series: str = "eager") -> ModelBundle:
    """Download and load one registered version's bundle (checksums verified); without ``dst``
    through the model cache, as ``load_champion``. ``series``: see ``ModelBundle.load``."""
    if dst is None:
        folder = _cached_download(str(version))
    else:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{MODEL_NAME}/{version}", dst_path=str(dst))
        folder = Path(local) / "artifacts" / "bundle"
    bundle = ModelBundle.load(folder, series=series)
    bundle.manifest["registered_version"] = f"{MODEL_NAME}/{version}"
    return bundle


def promote_version(version: str, why: str = "promoted by hand") -> str | None:
    """Make ``version`` the champion (a human's decision); returns the version it replaced."""
    client = _use_store()
    check_promotable(client, version)
    before = champion_version(client)
    set_champion(client, version, why)
    return before


def rollback() -> tuple[str, str]:
    """Move ``@champion`` back to the champion before the current one: ``(from, to)``."""
    client = _use_store()
    current = champion_version(client)
    if current is None:
        raise LookupError(f"no '{MODEL_NAME}@{CHAMPION}' in {tracking_uri()}: nothing to roll back")
    history = champion_history(client)
    earlier = history[:history.index(current)] if current in history else history
    if not earlier:
        raise LookupError(f"version {current} is the first champion on record: nothing to roll "
                          "back to (`prealert promote VERSION` picks one)")
    target = earlier[-1]
    check_promotable(client, target)
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, target)
    # the rolled-back version leaves the history, so a second rollback goes one further back
    client.set_registered_model_tag(MODEL_NAME, HISTORY_TAG, json.dumps(earlier))
    client.set_model_version_tag(MODEL_NAME, current, "prealert.rolled_back",
                                 datetime.now(UTC).isoformat(timespec="seconds"))
    return current, target


#: where ``load_champion`` keeps downloaded versions when no folder is given
MODEL_CACHE_ENV = "PREALERT_MODEL_CACHE"
#: versions kept per store: the one served and the one before it (still serving during a swap)
_CACHED_VERSIONS = 2


def model_cache_dir() -> Path:
    """``PREALERT_MODEL_CACHE``, else ``~/.cache/prealert/models``; one folder per tracking store."""
    root = Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "prealert" / "models")
    return root / hashlib.sha256(tracking_uri().encode("utf-8")).hexdigest()[:16]


def _cached_download(version: str) -> Path:
    """The bundle folder of ``version`` in the model cache, downloaded once.

    The download goes to a temporary sibling renamed into place, so two workers starting together
    never see half a folder; a cached folder is checked again by ``ModelBundle.load``. Older
    versions beyond the last ``_CACHED_VERSIONS`` used are removed.
    """
    cache = model_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"v{version}"
    if not final.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=cache))
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{MODEL_NAME}/{version}", dst_path=str(tmp))
            try:
                tmp.rename(final)
            except OSError:  # another worker put it there first
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    os.utime(final)  # most recently used: kept by the pruning below
    kept = sorted((p for p in cache.glob("v*") if p.is_dir()), key=lambda p: p.stat().st_mtime,
                  reverse=True)
    for old in kept[_CACHED_VERSIONS:]:
        shutil.rmtree(old, ignore_errors=True)
    return final / "artifacts" / "bundle"


def load_champion(dst: str | Path | None = None, *, series: str = "eager") -> ModelBundle:
    """Download and load the ``@champion`` bundle; the bundle knows its registry version.

    Without ``dst`` the version is kept in the model cache (``model_cache_dir``): Prophet models
    are parsed from there on first use, never at load, and a restart or a second worker reuses
    the download. Only the last two versions used stay in the cache.
    """
    client = _use_store()
    try:
        mv = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException as exc:
        raise LookupError(
            f"no '{MODEL_NAME}@{CHAMPION}' in {tracking_uri()}: run `prealert train` first"
        ) from exc
    # by the version just resolved, not by the alias: a promotion between the two calls would
    # otherwise load one version and label it with another
    return load_version(str(mv.version), dst, series=series)

"""Hot reload: the running service follows ``@champion`` (or its bundle folder) and swaps models whole;
the loaded model is frozen out of the garbage collector's full collections."""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from serving.pods import PodDirectory
from serving.predictor import (
    BUNDLE_ENV,
    ModelLoadError,
    Predictor,
    load_bundle_from_environment,
    one_line,
    source_from_environment,
)
from serving.rules import Catalog

RELOAD_ENV = "PREALERT_RELOAD_SECONDS"
DEFAULT_RELOAD_SECONDS = 60.0
GC_FREEZE_ENV = "PREALERT_GC_FREEZE"

logger = logging.getLogger("prealert.reload")


def reload_seconds() -> float:
    """Seconds between registry checks: ``PREALERT_RELOAD_SECONDS`` (0 = only on SIGHUP or
    ``POST /admin/reload``), default 60."""
    raw = os.environ.get(RELOAD_ENV, "").strip()
    if not raw:
        return DEFAULT_RELOAD_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(f"{RELOAD_ENV}={raw[:40]!r} is not a number of seconds >= 0")
    return value


def source_version() -> str:
    """What the service should be serving now: the ``@champion`` version, or a hash of the
    bundle folder's manifest (it lists every file's checksum)."""
    folder = os.environ.get(BUNDLE_ENV)
    if folder:
        digest = hashlib.sha256((Path(folder) / "manifest.json").read_bytes()).hexdigest()
        return f"folder-{digest[:16]}"
    from mlflow import MlflowClient

    from training.registry import CHAMPION, MODEL_NAME, tracking_uri

    uri = tracking_uri()
    version = MlflowClient(uri, uri).get_model_version_by_alias(MODEL_NAME, CHAMPION).version
    return f"{MODEL_NAME}/{version}"


@dataclass
class GcPauses:
    """Full (generation-2) collections of this process, from ``gc.callbacks``: count and pauses."""

    count: int = 0
    total_seconds: float = 0.0
    max_seconds: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=100))  # the last pauses, seconds
    _started: float | None = field(default=None, repr=False)

    def __call__(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            pause = time.perf_counter() - self._started
            self._started = None
            self.count += 1
            self.total_seconds += pause
            self.max_seconds = max(self.max_seconds, pause)
            self.recent.append(pause)

    def as_dict(self) -> dict:
        return {"full_collections": self.count, "total_ms": round(self.total_seconds * 1e3, 3),
                "max_ms": round(self.max_seconds * 1e3, 3),
                "recent_ms": [round(p * 1e3, 3) for p in self.recent],
                "frozen_objects": gc.get_freeze_count(), "tracked_objects": len(gc.get_objects())}


#: one per process: installed by the first ``ModelFollower``
GC_PAUSES = GcPauses()


def freeze_loaded() -> None:
    """Move everything alive now (the loaded model, the imported libraries) out of the collector's
    reach, so full collections stop walking it; ``gc.unfreeze`` first lets a replaced model go."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelFollower:
    """Holds the predictor a service answers with and follows the model source.

    Requests read ``predictor`` once each; a reload loads the new bundle fully, then replaces the
    attribute in one assignment, so every request sees one whole model. A failed load leaves the
    old model serving and says why in ``reload_error``; the same failed version is not retried
    by the interval (a SIGHUP or ``POST /admin/reload`` retries it).
    """

    def __init__(self, catalog: Catalog | None = None, pods: PodDirectory | None = None,
                 interval: float | None = None, freeze_gc: bool | None = None):
        self.catalog, self.pods = catalog, pods
        self.interval = reload_seconds() if interval is None else interval
        self.freeze_gc = (os.environ.get(GC_FREEZE_ENV, "1").strip() not in ("0", "false", "no")
                          if freeze_gc is None else freeze_gc)
        self.predictor: Predictor | None = None
        self.load_error: str | None = None  # no model at all
        self.reload_error: str | None = None  # the last reload failed; the old model serves
        self.serving_source: str | None = None
        self.last_check: float | None = None
        self.reloads = 0
        self.woken = 0  # checks asked for by SIGHUP
        self._failed_source: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if GC_PAUSES not in gc.callbacks:
            gc.callbacks.append(GC_PAUSES)

    # --- loading ------------------------------------------------------------------------------
    def load_first(self) -> None:
        """The model to start with; a failure is kept in ``load_error`` (later checks retry)."""
        try:
            source = source_version() if os.environ.get(BUNDLE_ENV) else None
            predictor = Predictor.from_environment(self.catalog, self.pods)
        except ModelLoadError as exc:
            self.load_error = str(exc)
            logger.error("no model to serve: %s", exc, exc_info=exc.__cause__)
            return
        except OSError as exc:
            self.load_error = f"cannot read the bundle folder: {one_line(exc)}"
            return
        self.catalog, self.pods = predictor.catalog, predictor.pods
        self._swap(predictor, source or predictor.model_version)

    def check(self, retry_failed: bool = False) -> dict:
        """Ask the source for its version; load and swap in a new one. Returns the status."""
        with self._lock:
            self.last_check = time.time()
            try:
                source = source_version()
            except Exception as exc:
                self.reload_error = f"cannot ask the model source for its version: {one_line(exc)}"
                logger.warning("%s", self.reload_error)
                return self.status()
            if source == self.serving_source or (source == self._failed_source and not retry_failed):
                return self.status()
            logger.info("model source now at %s (serving %s): loading", source, self.serving_source)
            try:
                bundle = load_bundle_from_environment()
                # a reload keeps the predictor's source (and its cache); a first load builds it
                prometheus = None if self.predictor else source_from_environment()
            except ModelLoadError as exc:
                self._failed_source = source
                still = f"; still serving {self.serving_source}" if self.predictor else ""
                failure = f"cannot load {source}: {exc}{still}"
                if self.predictor is None:
                    self.load_error = failure
                else:
                    self.reload_error = failure
                logger.error("%s", failure, exc_info=exc.__cause__)
                return self.status()
            current = self.predictor
            fresh = current.with_bundle(bundle) if current else Predictor(bundle, self.catalog, self.pods,
                                                                          prometheus)
            del current, bundle
            # the registry's label of what was loaded: the alias may have moved while loading
            self._swap(fresh, fresh.model_version if not os.environ.get(BUNDLE_ENV) else source)
            return self.status()

    def _swap(self, predictor: Predictor, source: str) -> None:
        previous = self.predictor.model_version if self.predictor else None
        self.predictor = predictor  # the one atomic step: requests read this attribute once each
        self.serving_source, self._failed_source = source, None
        self.load_error = self.reload_error = None
        if previous is not None:
            self.reloads += 1
            logger.info("now serving %s (was %s)", predictor.model_version, previous)
        if self.freeze_gc:
            freeze_loaded()

    # --- when to check --------------------------------------------------------------------------
    def start(self) -> None:
        """Check every ``interval`` seconds (if > 0) and whenever woken (SIGHUP, admin endpoint)."""
        self._thread = threading.Thread(target=self._run, name="prealert-reload", daemon=True)
        self._thread.start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda *_: self._wake.set())
        else:
            logger.warning("not on the main thread: SIGHUP will not trigger a reload")

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self.interval if self.interval > 0 else None)
            if self._stop.is_set():
                return
            self._wake.clear()
            self.woken += woken
            try:
                self.check(retry_failed=woken)
            except Exception:  # never let the follower die: the next tick tries again
                logger.exception("model check failed")

    def status(self) -> dict:
        return {
            "model_version": self.predictor.model_version if self.predictor else None,
            "source": self.serving_source, "load_error": self.load_error, "reload_error": self.reload_error,
            "reload_interval_seconds": self.interval, "reloads": self.reloads, "signalled_checks": self.woken,
            "last_check": self.last_check, "gc": GC_PAUSES.as_dict() | {"freeze": self.freeze_gc},
        }

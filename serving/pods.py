"""The pods the feature job has seen (its ``pods.parquet``), so a pod resolves to its workload and node."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

PODS_ENV = "PREALERT_PODS"
#: how often the file's modification time is looked at (the feature job rewrites it on schedule)
RECHECK_SECONDS = 30.0

logger = logging.getLogger("prealert.pods")


@dataclass(frozen=True)
class PodRecord:
    pod: str
    workload: str | None
    node: str | None


class PodDirectory:
    """Pod -> workload and node, from a ``pods.parquet`` (or a feature folder holding one).

    Re-read when the file changes; a file that cannot be read keeps the last good table and is
    logged, so a half-written export never breaks answers.
    """

    def __init__(self, path: str | Path, recheck_seconds: float = RECHECK_SECONDS):
        path = Path(path)
        self.path = path / "pods.parquet" if path.is_dir() else path
        self.recheck_seconds = recheck_seconds
        self._pods: dict[str, PodRecord] = {}
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._refresh(force=True)

    @classmethod
    def from_environment(cls) -> PodDirectory | None:
        raw = os.environ.get(PODS_ENV, "").strip()
        return cls(raw) if raw else None

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.recheck_seconds:
            return
        with self._lock:
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime
                if mtime == self._mtime:
                    return
                frame = pl.read_parquet(self.path, columns=["pod", "workload", "node"])
            except Exception as exc:  # keep serving with what we had
                logger.warning("cannot read the pods table %s: %s", self.path, exc)
                return
            self._pods = {pod: PodRecord(pod, workload, node)
                          for pod, workload, node in frame.iter_rows() if pod}
            self._mtime = mtime

    def lookup(self, pod: str) -> PodRecord | None:
        self._refresh()
        return self._pods.get(pod)

    def __len__(self) -> int:
        return len(self._pods)

"""The registry lock: one writer (retrain, train, promote, rollback) at a time; a killed one's is stale."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path


class LockBusy(RuntimeError):
    """Another live run holds the lock."""


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    started_at: datetime
    command: str

    def describe(self) -> str:
        return (f"pid {self.pid} on {self.host}, started {self.started_at.isoformat(timespec='seconds')}"
                f" ({self.command})")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_reason(owner: LockOwner, max_age: timedelta, now: datetime | None = None) -> str | None:
    """Why a lock left by ``owner`` no longer protects anything, or None if it may still be live.

    Dead when its pid is gone on this host; on another host (a pod that was killed) only its age
    can tell, so a lock older than ``max_age`` counts as left behind.
    """
    now = now or datetime.now(UTC)
    if owner.host == socket.gethostname() and not _pid_alive(owner.pid):
        return f"its process (pid {owner.pid}) is gone"
    if now - owner.started_at > max_age:
        return f"older than {max_age.total_seconds() / 3600:g} h"
    return None


class RegistryLock:
    """An exclusive lock file holding pid, host and start time; ``with RegistryLock(path): ...``.

    Created atomically (``O_EXCL``). A stale lock (see :func:`stale_reason`) is moved aside and
    taken over, and ``cleared`` says whose it was; a live one raises :class:`LockBusy`.
    """

    def __init__(self, path: str | Path, max_age: timedelta = timedelta(hours=6),
                 command: str = "prealert"):
        self.path = Path(path)
        self.max_age = max_age
        self.command = command
        self.cleared: str | None = None  # the stale lock taken over, if any

    def read(self) -> LockOwner | None:
        try:
            d = json.loads(self.path.read_text())
            return LockOwner(int(d["pid"]), str(d["host"]), datetime.fromisoformat(d["started_at"]),
                             str(d.get("command", "?")))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # half-written by a killed run: as old as its file
            mtime = datetime.fromtimestamp(self.path.stat().st_mtime, UTC)
            return LockOwner(-1, "?", mtime, "unreadable lock file")

    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                       "started_at": datetime.now(UTC).isoformat(), "command": self.command}, f)
        return True

    def acquire(self) -> RegistryLock:
        if self._create():
            return self
        owner = self.read()
        if owner is None:  # released between our two looks
            return self.acquire()
        why = stale_reason(owner, self.max_age)
        if why is None:
            raise LockBusy(f"another run holds {self.path}: {owner.describe()}")
        # move it aside first: of two runs clearing the same stale lock, only one moves it
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return self.acquire()
        moved = RegistryLock(aside).read()
        if moved is not None and (moved.pid, moved.host) != (owner.pid, owner.host):
            # a fresh lock replaced the stale one between our look and the move: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink()
            raise LockBusy(f"another run took {self.path} while a stale lock was cleared")
        aside.unlink()
        if not self._create():
            raise LockBusy(f"another run took {self.path} while a stale lock was cleared")
        self.cleared = f"cleared a stale lock ({owner.describe()}): {why}"
        return self

    def release(self) -> None:
        owner = self.read()
        if owner is not None and owner.pid == os.getpid() and owner.host == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RegistryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

"""Start, probe and stop a real ``bentoml serve`` process on loopback."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from serving.predictor import BUNDLE_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
QUIET_ENV = {"BENTOML_DO_NOT_TRACK": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
#: an unreachable or hanging registry fails the start within about a minute, not MLflow's 10+
REGISTRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
PR_SET_PDEATHSIG = 1


class ServiceFailed(RuntimeError):
    """The server will not answer; the message says why in one line."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) only listens on this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it resolves beyond loopback for all we know
        return False


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on ``host:port`` (a socket left in TIME_WAIT does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGTERM if the process that started it dies, even by SIGKILL."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_service(
    port: int, host: str = "127.0.0.1", bundle: str | Path | None = None,
    env: dict[str, str] | None = None, log_file: Path | None = None,
) -> subprocess.Popen:
    """Launch ``bentoml serve serving.service:PreAlert`` in its own process group.

    Its output goes to ``log_file`` (appended) when given, else to this process's terminal.
    """
    child_env = {**REGISTRY_DEFAULTS, **os.environ, **QUIET_ENV, **(env or {})}
    home = None
    if "BENTOML_HOME" not in child_env:
        # BentoML keeps /metrics' multiprocess files under its home and wipes them at every start:
        # a shared home lets two servers on one host erase and mix each other's counters
        home = tempfile.mkdtemp(prefix="prealert-bentoml-home-")
        child_env["BENTOML_HOME"] = home
    if bundle is not None:
        child_env[BUNDLE_ENV] = str(Path(bundle).resolve())
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:PreAlert",
           "--host", host, "--port", str(port), "--working-dir", str(PROJECT_ROOT)]
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 - the child holds it
    try:
        proc = subprocess.Popen(
            cmd, env=child_env, stdout=out, stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)  # noqa: PLW1509
    except BaseException:
        if home:
            shutil.rmtree(home, ignore_errors=True)
        raise
    finally:
        if out:
            out.close()
    proc.prealert_home = home  # removed by stop_service
    return proc


def _not_ready_reason(response: httpx.Response) -> str | None:
    """The load failure a 503 from ``/readyz`` reports, or None while it is still starting."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return error["message"] if error.get("code") == "model_not_loaded" else None


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 300.0,
               log_file: Path | None = None) -> None:
    """Poll ``/readyz`` until the service answers 200; raise ``ServiceFailed`` if it reports a
    model that failed to load, dies, or is not ready within ``timeout`` seconds."""
    see = f"; see {log_file}" if log_file else ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceFailed(f"bentoml serve exited with code {proc.returncode} before it was ready{see}")
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
        except httpx.HTTPError:  # not listening yet, or the worker is still loading the model
            response = None
        if response is not None and response.status_code == 200:
            return
        if response is not None and response.status_code == 503 and (
                reason := _not_ready_reason(response)):
            raise ServiceFailed(f"no model to serve: {reason}")
        time.sleep(0.5)
    raise ServiceFailed(f"service at {url} not ready after {timeout:.0f} s{see}")


def stop_service(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop the server and its workers by process group id (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    _kill_group(proc.pid, signal.SIGKILL)  # workers its exit may have left behind
    home = getattr(proc, "prealert_home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone: nothing left to stop
        os.killpg(pgid, sig)

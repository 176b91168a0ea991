"""Start, probe and stop a real ``bentoml serve`` process on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serving.predictor import BUNDLE_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[1]
QUIET_ENV = {"BENTOML_DO_NOT_TRACK": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_service(
    port: int, host: str = "127.0.0.1", bundle: str | Path | None = None,
    env: dict[str, str] | None = None, log_file: Path | None = None,
) -> subprocess.Popen:
    """Launch ``bentoml serve serving.service:PreAlert`` in its own process group."""
    child_env = {**os.environ, **QUIET_ENV, **(env or {})}
    if bundle is not None:
        child_env[BUNDLE_ENV] = str(Path(bundle).resolve())
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:PreAlert",
           "--host", host, "--port", str(port), "--working-dir", str(PROJECT_ROOT)]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(cmd, env=child_env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 120.0) -> None:
    """Poll ``/readyz`` until the service answers; raise if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with code {proc.returncode} before ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"service at {url} not ready after {timeout:.0f} s")


def stop_service(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop the server and its workers by process group id."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)

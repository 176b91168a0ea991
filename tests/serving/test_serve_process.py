"""``prealert serve`` as a user runs it: a clear one-line reason and exit 1 when the model cannot
load, exit 2 on a busy port, and SIGTERM stopping the whole process tree."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.server import free_port

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "sample" / "golden_bundle"


def prealert_serve(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``prealert serve`` in its own session, its stderr in ``tmp_path/serve.err``."""
    err = open(tmp_path / "serve.err", "w")  # noqa: SIM115 - the child holds it
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--log-file", str(tmp_path / "bentoml.log"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **(env or {})},
                            cwd=tmp_path, start_new_session=True)
    err.close()
    return proc


def finished(proc: subprocess.Popen, tmp_path: Path, timeout: float = 240) -> tuple[int, list[str]]:
    try:
        code = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return code, (tmp_path / "serve.err").read_text().splitlines()


def server_group(tmp_path: Path) -> int:
    """The bentoml process group the command started (it prints its pid)."""
    first = (tmp_path / "serve.err").read_text().splitlines()[0]
    return int(re.search(r"\(pid (\d+)\)", first).group(1))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_no_champion_fails_fast_with_the_reason(tmp_path):
    uri = f"sqlite:///{tmp_path / 'empty' / 'mlflow.db'}"
    (tmp_path / "empty").mkdir()
    proc = prealert_serve(tmp_path, "--port", str(free_port()), env={"MLFLOW_TRACKING_URI": uri})
    code, lines = finished(proc, tmp_path)
    assert code == 1, lines
    reason = f"no 'prealert@champion' in {uri}: run `prealert train` first"
    assert lines[-1] == f"error: no model to serve: {reason}"
    assert not group_alive(server_group(tmp_path))
    assert "no model to serve" in (tmp_path / "bentoml.log").read_text()  # the log has the traceback


@pytest.mark.slow
def test_corrupt_bundle_fails_fast_with_the_reason(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text('{"schema_version": 1, "series_files": ')
    proc = prealert_serve(tmp_path, "--port", str(free_port()), "--bundle", str(tmp_path / "bad"))
    code, lines = finished(proc, tmp_path)
    assert code == 1, lines
    reason = f"cannot load the bundle folder {tmp_path / 'bad'}: "
    assert lines[-1].startswith(f"error: no model to serve: {reason}"), lines
    assert "manifest.json: not valid JSON (Expecting value" in lines[-1], lines
    assert not group_alive(server_group(tmp_path))


def test_a_busy_port_is_a_clear_error_before_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = finished(prealert_serve(tmp_path, "--port", str(port)), tmp_path, timeout=60)
    assert code == 2
    assert lines == [f"error: port {port} on 127.0.0.1 is already in use; "
                     "stop what listens there or pick --port"]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [[signal.SIGTERM], [signal.SIGINT],
                                  [signal.SIGTERM, signal.SIGINT, signal.SIGTERM]],
                         ids=["SIGTERM", "SIGINT", "one-after-another"])
def test_a_signal_stops_the_whole_tree(tmp_path, stop):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = prealert_serve(tmp_path, "--port", str(port), "--bundle", str(GOLDEN))
    try:
        deadline = time.monotonic() + 240
        while "serving on" not in (tmp_path / "serve.err").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.err").read_text()
            time.sleep(0.5)
        answer = httpx.post(f"{url}/predict", json={"series_id": "golden-app/apdex"}, timeout=60)
        assert answer.status_code == 200, answer.text
        metrics = ""
        for _ in range(20):  # the counters are written by the worker; read until they show
            metrics = httpx.get(f"{url}/metrics", timeout=30).text
            if "prealert_requests_total{" in metrics:
                break
            time.sleep(0.5)
        pgid = server_group(tmp_path)
        for sig in stop:  # `uv run` forwards the one it gets: signals may come at once
            proc.send_signal(sig)
        code, lines = finished(proc, tmp_path, timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, lines
    assert not any("Traceback" in line for line in lines), lines
    assert not group_alive(pgid), "bentoml processes survived"
    assert 'prealert_requests_total{endpoint="/predict",status="200"} 1.0' in metrics
    assert 'prealert_request_duration_seconds_count{endpoint="/predict"} 1.0' in metrics
    assert "path=/predict" not in (tmp_path / "bentoml.log").read_text()  # no access log by default


@pytest.mark.slow
def test_the_access_log_is_an_opt_in(tmp_path):
    port = free_port()
    proc = prealert_serve(tmp_path, "--port", str(port), "--bundle", str(GOLDEN), "--access-log")
    try:
        deadline = time.monotonic() + 240
        while "serving on" not in (tmp_path / "serve.err").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.err").read_text()
            time.sleep(0.5)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"series_id": "golden-app/apdex"},
                            timeout=60)
        assert answer.status_code == 200, answer.text
        log = ""
        for _ in range(20):  # written by the worker; read until it shows
            log = (tmp_path / "bentoml.log").read_text()
            if "path=/predict" in log:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        code, lines = finished(proc, tmp_path, timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, lines
    assert "method=POST,path=/predict" in log and "status=200" in log


def test_a_bad_access_log_setting_is_a_clear_error_before_start(tmp_path):
    code, lines = finished(prealert_serve(tmp_path, "--port", str(free_port()),
                                          env={"PREALERT_ACCESS_LOG": "maybe"}), tmp_path, timeout=60)
    assert code == 2
    assert lines == ["error: PREALERT_ACCESS_LOG=maybe is not one of 1, true, yes, on, 0, false, no, off"]

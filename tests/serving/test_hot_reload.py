"""Hot reload against a real ``bentoml serve`` and a temporary MLflow store: requests keep flowing while
``@champion`` moves; a version that cannot load leaves the old one serving and says why."""

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import mlflow
import psutil
import pytest

from serving.server import free_port, start_service, stop_service, wait_ready
from training.bundle import ModelBundle
from training.registry import CHAMPION, MODEL_NAME, use_experiment

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "data" / "sample" / "golden_bundle"
TOKEN = "test-token-for-reload"
AUTH = {"authorization": f"Bearer {TOKEN}"}
HEAP = "golden-app/jvm_heap_pct"


def register(bundle: Path) -> str:
    """Log ``bundle`` (a folder named ``bundle``, as training writes it) as a new version of the
    registered model; not promoted."""
    use_experiment()
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="bundle", python_model=str(ROOT / "training" / "pyfunc_entry.py"),
            artifacts={"bundle": str(bundle)}, registered_model_name=MODEL_NAME, pip_requirements=[])
    return str(info.registered_model_version)


def promote(version: str) -> None:
    use_experiment().set_registered_model_alias(MODEL_NAME, CHAMPION, version)


def workers(proc) -> list[psutil.Process]:
    """The BentoML worker processes under the server (not its arbiter)."""
    return [p for p in psutil.Process(proc.pid).children(recursive=True)
            if any("worker" in part for part in p.cmdline())]


class Load:
    """Threads sending /predict back to back, recording (status, model version, sent, answered)."""

    def __init__(self, url: str, threads: int = 2):
        self.url, self.stop, self.seen = url, threading.Event(), []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=30, headers=AUTH) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post(f"{self.url}/predict", json={"series_id": HEAP, "threshold": 68})
                    self.seen.append((r.status_code, r.json().get("model_version"), sent, time.monotonic()))
                except (httpx.HTTPError, ValueError) as exc:
                    self.seen.append((0, repr(exc), sent, time.monotonic()))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


@pytest.mark.slow
def test_the_service_follows_champion_under_load_and_keeps_serving_through_a_bad_version(
        tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    second = ModelBundle.load(GOLDEN)
    second.manifest["data_fingerprint"] = "2" * 64  # same models, another identity
    second.save(tmp_path / "second" / "bundle")
    ModelBundle.load(GOLDEN).save(tmp_path / "first" / "bundle")
    v1 = register(tmp_path / "first" / "bundle")
    promote(v1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "bentoml.log"
    proc = start_service(port, log_file=log, env={
        "MLFLOW_TRACKING_URI": uri, "PREALERT_RELOAD_SECONDS": "1", "PREALERT_API_TOKEN": TOKEN})
    try:
        wait_ready(proc, url, log_file=log)
        assert httpx.post(f"{url}/predict", json={"series_id": HEAP}, timeout=30).status_code == 401
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200  # health stays open
        # 1. a promotion while requests flow: picked up by the interval check
        with Load(url) as load:
            wait_for(lambda: len(load.seen) >= 200, 120, "200 requests before the promotion")
            v2 = register(tmp_path / "second" / "bundle")
            promoted_at = time.monotonic()
            promote(v2)
            wait_for(lambda: any(v == f"{MODEL_NAME}/{v2}" for _, v, *_ in load.seen), 120,
                     "an answer from the promoted version")
            swapped = len(load.seen)
            wait_for(lambda: len(load.seen) >= swapped + 200, 120, "200 requests after the swap")
        seen = sorted(load.seen, key=lambda s: s[3])  # by answer time
        statuses = Counter(status for status, *_ in seen)
        new_at = next(answered for _, v, _, answered in seen if v == f"{MODEL_NAME}/{v2}")
        before = Counter(v for _, v, _, answered in seen if answered < new_at)
        overlapping = Counter(v for _, v, sent, answered in seen if sent < new_at <= answered)
        after = Counter(v for _, v, sent, _ in seen if sent >= new_at)
        print(f"hot reload under load: {len(seen)} requests, {len(seen) - statuses[200]} failed; "
              f"answered before the first new answer {dict(before)}, in flight across it "
              f"{dict(overlapping)}, sent after it {dict(after)}; first new answer "
              f"{new_at - promoted_at:.1f} s after the alias moved")
        assert statuses == {200: len(seen)}, statuses
        assert set(before) == {f"{MODEL_NAME}/{v1}"}
        assert set(after) == {f"{MODEL_NAME}/{v2}"}  # once swapped, never the old one again
        # 2. a version that cannot load: the old one keeps serving; /status says why
        corrupt = tmp_path / "corrupt" / "bundle"
        second.save(corrupt)
        manifest = json.loads((corrupt / "manifest.json").read_text())
        manifest["checksums"][next(iter(manifest["checksums"]))] = "0" * 64
        (corrupt / "manifest.json").write_text(json.dumps(manifest))
        v3 = register(corrupt)
        promote(v3)
        status = wait_for(lambda: (s := httpx.get(f"{url}/status", headers=AUTH, timeout=30).json())[
            "reload_error"] and s, 60, "the failed reload reported")
        assert f"cannot load {MODEL_NAME}/{v3}" in status["reload_error"]
        assert f"still serving {MODEL_NAME}/{v2}" in status["reload_error"]
        answer = httpx.post(f"{url}/predict", json={"series_id": HEAP}, headers=AUTH, timeout=30)
        assert answer.status_code == 200 and answer.json()["model_version"] == f"{MODEL_NAME}/{v2}"
        assert answer.headers["x-prealert-model-version"] == f"{MODEL_NAME}/{v2}"
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
        # 3. the admin endpoint (behind the token) and SIGHUP reload on demand
        assert httpx.post(f"{url}/admin/reload", timeout=30).status_code == 401
        retried = httpx.post(f"{url}/admin/reload", headers=AUTH, timeout=60).json()
        assert retried["model_version"] == f"{MODEL_NAME}/{v2}" and "cannot load" in retried["reload_error"]
        promote(v1)
        signalled = None
        for worker in workers(proc):
            os.kill(worker.pid, signal.SIGHUP)
            signalled = worker.pid
        wait_for(lambda: httpx.post(f"{url}/predict", json={"series_id": HEAP}, headers=AUTH,
                                    timeout=30).json()["model_version"] == f"{MODEL_NAME}/{v1}",
                 30, "the rollback served")
        final_status = httpx.get(f"{url}/status", headers=AUTH, timeout=30).json()
        assert signalled and final_status["signalled_checks"] >= 1  # the worker took the SIGHUP
        assert final_status["reload_error"] is None and final_status["reloads"] == 2
        batch = httpx.post(f"{url}/predict_batch", headers=AUTH, timeout=60, json={"items": [
            {"series_id": HEAP, "threshold": 68}, {"rule": "apdex", "labels": {"service": "golden-app"}},
            {"series_id": "nope/apdex"}, {"series_id": HEAP, "direction": "sideways"}]}).json()
        assert [r["status"] for r in batch["results"]] == [200, 200, 404, 400]
        assert batch["model_version"] == f"{MODEL_NAME}/{v1}"
        rules = httpx.get(f"{url}/rules", headers=AUTH, timeout=30).json()
        assert len(rules["rules"]) == 16
    finally:
        stop_service(proc)
    assert "not on the main thread" not in log.read_text()  # SIGHUP is handled in the worker

"""Batch, series, rules, alerts, pods, auth and limits through the ASGI app and the pure predictor."""

import gc
import weakref
from pathlib import Path

import polars as pl
import pytest
from starlette.testclient import TestClient

from serving.http_edge import MAX_CONCURRENCY_ENV, TOKEN_ENV, TOKEN_FILE_ENV, HttpEdge
from serving.pods import PodDirectory
from serving.predictor import MAX_BATCH_ENV, Predictor
from serving.reload import ModelFollower
from serving.rules import load_catalog
from serving.schemas import AlertsRequest, ErrorResponse, PredictBatchRequest, PredictRequest
from training.bundle import ModelBundle

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "sample" / "golden_bundle"
HEAP, APDEX = "golden-app/jvm_heap_pct", "golden-app/apdex"


def error(response) -> dict:
    assert response.headers["content-type"] == "application/json", response.text
    return ErrorResponse.model_validate_json(response.content).error.model_dump()


def test_bentoml_is_not_handed_the_batch_body_to_parse(client, monkeypatch):
    """/predict_batch reads the body the edge kept; BentoML's input model gets an empty one (it
    would parse the whole body only to drop it); /predict still gets its body."""
    from serving.service import PreAlert

    seen: dict[str, list] = {}
    for name in ("predict_batch", "predict"):
        spec = PreAlert.apis[name].input_spec
        original = spec.model_validate_json

        def recording(data, *args, _name=name, _original=original, **kwargs):
            seen.setdefault(_name, []).append(bytes(data))
            return _original(data, *args, **kwargs)

        monkeypatch.setattr(spec, "model_validate_json", recording)
    r = client.post("/predict_batch", json={"items": [{"series_id": HEAP}] * 3})
    assert r.status_code == 200 and r.json()["answered"] == 3, r.text
    assert client.post("/predict", json={"series_id": HEAP}).status_code == 200
    assert seen["predict_batch"] == [b"{}"]
    assert seen["predict"] == [b'{"series_id":"' + HEAP.encode() + b'"}']


def test_a_batch_answers_good_items_and_gives_bad_ones_their_own_error(client):
    items = [{"series_id": HEAP, "threshold": 68}, {"series_id": "nope/x"},
             {"series_id": APDEX, "direction": "up"}, {"rule": "apdex", "labels": {"service": "golden-app"}},
             {"series_id": APDEX, "horizon_minutes": 1000}]
    r = client.post("/predict_batch", json={"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["status"] for x in body["results"]] == [200, 404, 400, 200, 400]
    assert (body["answered"], body["failed"]) == (2, 3)
    assert body["model_version"] == r.headers["x-prealert-model-version"] == body["results"][0]["answer"][
        "model_version"]
    single = client.post("/predict", json=items[0]).json()
    assert body["results"][0]["answer"]["probability"] == single["probability"]  # the same prediction
    assert "no model for series 'nope/x'" in body["results"][1]["error"]["message"]
    assert body["results"][2]["error"]["message"].startswith("direction: Input should be")
    rule_answer = body["results"][3]["answer"]
    assert (rule_answer["rule"], rule_answer["threshold"], rule_answer["direction"],
            rule_answer["horizon_minutes"]) == ("apdex", 0.7, "below", 120)
    assert "beyond the 360 min" in body["results"][4]["error"]["message"]


def test_every_batch_item_is_exactly_its_single_predict_answer_or_error(client):
    """The batch path validates all items in one pass and builds answers without copies: each
    result is byte for byte what /predict says for the item alone, answers and errors alike."""
    recent = [{"ts": f"2026-10-15T00:{m:02d}:00Z", "value": 60.0 + 0.1 * m} for m in range(30)]
    items = [
        {"series_id": HEAP, "threshold": 68, "recent": recent},
        {"series_id": APDEX, "threshold": 0.94, "direction": "below", "recent": recent[:3]},
        {"series_id": HEAP, "recent": [{"ts": "1999-01-01T00:00:00Z", "value": 1.0}]},  # bad time
        {"series_id": HEAP, "threshold": "68"},  # a string is not a number here
        {"series_id": HEAP, "horizon_minutes": -1, "direction": "sideways", "extra": 1},  # three errors
        {"labels": {}},  # names no series
        {"metric": "jvm_heap_pct", "labels": {"service": "golden-app"}, "now": "2026-10-15T00:30:00Z"},
        {"series_id": "nope/jvm_heap_pct"},
        {"rule": "jvm_heap", "labels": {"pod": "golden-app-7f9c-x2x"}, "recent": recent[-5:]},
        {"series_id": APDEX, "horizon_minutes": 1000},
    ]
    batch = client.post("/predict_batch", json={"items": items}).json()["results"]
    assert [r["index"] for r in batch] == list(range(len(items)))
    for item, result in zip(items, batch, strict=True):
        single = client.post("/predict", json=item)
        assert result["status"] == single.status_code, (item, single.text)
        if single.status_code == 200:
            assert result["answer"] == single.json() and result["error"] is None
        else:
            assert result["error"] == error(single) and result["answer"] is None
    assert {r["status"] for r in batch} == {200, 400, 404}


def test_a_batch_over_the_limit_is_413(client, monkeypatch):
    monkeypatch.setenv(MAX_BATCH_ENV, "3")
    r = client.post("/predict_batch", json={"items": [{"series_id": HEAP}] * 4})
    assert r.status_code == 413 and MAX_BATCH_ENV in error(r)["message"]
    r = client.post("/alerts", json={"series": [{"series_id": HEAP}] * 4})
    assert r.status_code == 413 and "4 series is more than" in error(r)["message"]
    assert client.post("/predict_batch", json={"items": [{"series_id": HEAP}] * 3}).status_code == 200


def test_series_lists_what_the_bundle_knows_filtered(client):
    every = client.get("/series").json()
    assert every["count"] == 2 and {x["series_id"] for x in every["series"]} == {HEAP, APDEX}
    heap = next(x for x in every["series"] if x["series_id"] == HEAP)
    assert (heap["entity"], heap["metric"], heap["model_kind"], heap["fallback"]) == (
        "golden-app", "jvm_heap_pct", "prophet", False)
    assert heap["first_ts"] < heap["last_ts"] and heap["n_points"] == 288
    assert [x["series_id"] for x in client.get("/series?metric=apdex").json()["series"]] == [APDEX]
    assert client.get("/series?fallback=true").json()["count"] == 0
    assert client.get("/series?entity=golden-app&kind=prophet").json()["count"] == 2
    assert error(client.get("/series?colour=red"))["message"].startswith("unknown filter(s) ['colour']")
    assert client.get("/series?fallback=maybe").status_code == 400


def test_rules_lists_the_catalogue(client):
    rules = client.get("/rules").json()
    assert len(rules["rules"]) == 16 and rules["files"][0].endswith("rules_catalog.yaml")
    assert {"name": "jvm_heap", "metric": "jvm_heap_pct", "threshold": 90.0, "direction": "above",
            "lead_minutes": 30.0, "horizon_minutes": 240.0, "severity": "warning",
            "overrides": {}} in rules["rules"]


def test_a_request_may_name_a_rule_and_its_fields_win(client):
    r = client.post("/predict", json={"rule": "jvm_heap", "labels": {"service": "golden-app"},
                                      "threshold": 68})
    assert r.status_code == 200, r.text
    a = r.json()
    assert (a["series_id"], a["rule"], a["threshold"], a["horizon_minutes"]) == (HEAP, "jvm_heap", 68, 240)
    assert a["resolved_by"] == "service label"
    assert client.post("/predict", json={"rule": "nope", "series_id": HEAP}).status_code == 404
    mismatch = client.post("/predict", json={"rule": "apdex", "series_id": HEAP})
    assert mismatch.status_code == 400 and "watches apdex" in error(mismatch)["message"]


def test_alerts_lists_crossings_within_the_lead_time_most_urgent_first(tmp_path):
    mine = tmp_path / "rules.yaml"
    mine.write_text("overrides:\n"
                    "  - {rule: jvm_heap, entity: golden-app, threshold: 68, lead_minutes: 240}\n"
                    "  - {rule: apdex, entity: golden-app, threshold: 0.99, direction: above}\n")
    predictor = Predictor(ModelBundle.load(GOLDEN), load_catalog(mine))
    heap_alone = predictor.predict(PredictRequest(series_id=HEAP, threshold=68))
    answer = predictor.alerts(AlertsRequest(series=[
        {"series_id": APDEX}, {"series_id": HEAP}, {"series_id": "nope/apdex"},
        {"metric": "jvm_heap_pct", "labels": {"pod": "golden-app-7d9f8b6c5d-x2x9k"}}]))
    assert answer.checked == 3 and [s.index for s in answer.skipped] == [2]
    assert answer.skipped[0].error.code == "not_found"
    assert [(a.rule, a.series_id) for a in answer.alerts][:1] == [("jvm_heap", HEAP)]
    first = answer.alerts[0]
    assert first.minutes_to_threshold == heap_alone.minutes_to_threshold <= first.lead_minutes == 240
    assert first.probability >= heap_alone.alarm_probability
    minutes = [0 if a.already_crossed else a.minutes_to_threshold for a in answer.alerts]
    assert minutes == sorted(minutes)
    # the default catalogue's heap rule (90 %) is not reached by the golden series within 30 min
    default = Predictor(ModelBundle.load(GOLDEN), load_catalog())
    assert default.alerts(AlertsRequest(series=[{"series_id": HEAP}], rules=["jvm_heap"])).alerts == []
    with pytest.raises(ValueError, match="no rule"):
        predictor.alerts(AlertsRequest(series=[{"series_id": HEAP}], rules=["nope"]))


def test_a_new_pod_resolves_through_the_pods_table_then_by_name(tmp_path):
    pl.DataFrame({"pod": ["weird-pod-name", "golden-app-7d9f8b6c5d-x2x9k"],
                  "workload": ["golden-app", "golden-app"], "node": ["node-1", "node-1"]}).write_parquet(
        tmp_path / "pods.parquet")
    predictor = Predictor(ModelBundle.load(GOLDEN), pods=PodDirectory(tmp_path))
    recent = [{"ts": "2026-10-14T23:30:00Z", "value": 0.94}, {"ts": "2026-10-14T23:45:00Z", "value": 0.94}]
    by_table = predictor.predict_batch(PredictBatchRequest(items=[
        {"metric": "apdex", "labels": {"pod": "weird-pod-name"}, "recent": recent}])).results[0].answer
    assert by_table.series_id == APDEX
    assert by_table.resolved_by == "pod 'weird-pod-name' -> workload 'golden-app' (pods.parquet)"
    by_name = predictor.predict(PredictRequest(metric="apdex", labels={"pod": "golden-app-5d9f8b6c5d-abcde"}))
    assert by_name.resolved_by.endswith("(not in pods.parquet; pod name pattern)")
    without = Predictor(ModelBundle.load(GOLDEN))
    with pytest.raises(LookupError, match="pods.parquet"):
        without.predict(PredictRequest(metric="apdex", labels={"pod": "weird-pod-name"}))


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_auth_guards_the_apis_and_leaves_health_open(monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    c = TestClient(HttpEdge(_ok))
    assert c.post("/predict", json={}).status_code == 401
    r = c.post("/predict", json={}, headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401 and error(r)["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert c.post("/predict", json={}, headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert c.post("/admin/reload", headers={"authorization": "bearer s3cret"}).status_code == 200
    assert c.get("/series").status_code == 401 and c.get("/status").status_code == 401
    for open_path in ("/readyz", "/livez", "/metrics", "/docs.json"):
        assert c.get(open_path).status_code == 200
    monkeypatch.delenv(TOKEN_ENV)
    (tmp_path / "token").write_text("from-a-file\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(tmp_path / "token"))
    c = TestClient(HttpEdge(_ok))
    assert c.post("/predict", json={}, headers={"authorization": "Bearer from-a-file"}).status_code == 200
    monkeypatch.setenv(TOKEN_FILE_ENV, str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="cannot read the token"):
        HttpEdge(_ok)


def test_requests_over_the_concurrency_limit_get_503(monkeypatch):
    import anyio

    monkeypatch.setenv(MAX_CONCURRENCY_ENV, "2")
    release = anyio.Event()

    async def slow(scope, receive, send):
        await release.wait()
        await _ok(scope, receive, send)

    edge = HttpEdge(slow)
    statuses = []

    async def call():
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        await edge({"type": "http", "path": "/predict", "method": "POST", "headers": []}, receive, send)
        statuses.append((sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])))

    async def main():
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(call)
            await anyio.sleep(0.2)
            release.set()

    anyio.run(main)
    assert sorted(s for s, _ in statuses) == [200, 200, 503]
    busy = next(body for s, body in statuses if s == 503)
    assert b'"overloaded"' in busy and MAX_CONCURRENCY_ENV.encode() in busy


def test_a_reload_swaps_the_bundle_and_frees_the_old_one_from_the_frozen_heap(tmp_path, monkeypatch):
    folder = tmp_path / "bundle"
    ModelBundle.load(GOLDEN).save(folder)
    monkeypatch.setenv("PREALERT_BUNDLE", str(folder))
    follower = ModelFollower(interval=0, freeze_gc=True)
    try:
        follower.load_first()
        first = follower.predictor
        assert first is not None and gc.get_freeze_count() > 0  # the loaded model is out of gc's walks
        assert follower.check()["reloads"] == 0  # nothing changed: nothing loaded
        old = weakref.ref(first.bundle)
        changed = ModelBundle.load(GOLDEN)
        changed.manifest["data_fingerprint"] = "f" * 64
        changed.save(folder)
        del first
        status = follower.check()
        assert status["reloads"] == 1 and status["model_version"] == "bundle-ffffffffffff"
        assert old() is None, "the replaced bundle is still alive (frozen or referenced)"
        (folder / "manifest.json").write_text("{broken")
        status = follower.check()
        assert status["model_version"] == "bundle-ffffffffffff"  # the old model keeps serving
        assert "manifest.json: not valid JSON" in status["reload_error"] and "still serving" in status[
            "reload_error"]
    finally:
        gc.unfreeze()


def test_serving_beyond_loopback_without_a_token_warns(monkeypatch):
    import socket

    from typer.testing import CliRunner

    from serving.cli import app
    from serving.server import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    with socket.socket() as taken:  # the port is taken: the command stops right after its checks
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        warned = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", port])
        monkeypatch.setenv(TOKEN_ENV, "x")
        quiet = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", port])
    assert warned.exit_code == 2 and "without auth" in warned.output and TOKEN_ENV in warned.output
    assert quiet.exit_code == 2 and "without auth" not in quiet.output

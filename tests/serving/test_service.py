"""The HTTP contract through BentoML's ASGI app (no server): answers, 4xx with messages, versions."""

from pathlib import Path

import pytest
from starlette.testclient import TestClient

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "sample" / "golden_bundle"


@pytest.fixture(scope="module")
def client():
    mp = pytest.MonkeyPatch()
    mp.setenv("PREALERT_BUNDLE", str(GOLDEN))
    from serving.service import PreAlert

    with TestClient(PreAlert.to_asgi()) as c:
        yield c
    mp.undo()


def test_predict_answers_with_the_model_version(client):
    body = {"series_id": "golden-app/jvm_heap_pct", "threshold": 68, "horizon_minutes": 240}
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["series_id"] == "golden-app/jvm_heap_pct" and a["model_version"].startswith("bundle-")
    assert a["minutes_to_threshold"] > 0 and a["probability"] > 0.5
    assert a["direction"] == "above"  # the catalogue's direction for heap
    assert a["message"].startswith("golden-app/jvm_heap_pct above 68")
    assert a["drivers"] and a["driver"] == a["drivers"][0]["component"]


def test_pod_label_resolves_to_its_workload(client):
    body = {"metric": "apdex", "labels": {"pod": "golden-app-7d9f8b6c5d-x2x9k"}, "threshold": 0.5,
            "recent": [{"ts": "2026-10-14T23:30:00Z", "value": 0.94},
                       {"ts": "2026-10-14T23:45:00Z", "value": 0.94}]}
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["series_id"] == "golden-app/apdex"
    assert r.json()["anomaly_score"] is not None


@pytest.mark.parametrize(("body", "status", "phrase"), [
    ({"series_id": "nope/jvm_heap_pct", "threshold": 1}, 404, "no model for series"),
    ({"metric": "jvm_heap_pct", "labels": {"pod": "weird"}}, 404, "cannot locate a series"),
    ({"threshold": 90}, 400, "series_id"),
    ({"series_id": "golden-app/apdex", "horizon_minutes": -5}, 400, "horizon_minutes"),
    ({"series_id": "golden-app/apdex", "direction": "up"}, 400, "direction"),
    ({"series_id": "golden-app/apdex", "horizon_minutes": 1000}, 400, "beyond the 360 min"),
    ({"series_id": "golden-app/apdex", "recent": [{"ts": "yesterday", "value": 1}]}, 400, "ts"),
    ({"series_id": "golden-app/apdex", "surprise": 1}, 400, "surprise"),
])
def test_bad_requests_get_4xx_with_a_message(client, body, status, phrase):
    r = client.post("/predict", json=body)
    assert r.status_code == status, r.text
    assert phrase in r.text


def test_model_endpoint_reports_what_is_served(client):
    m = client.post("/model", json={}).json()
    assert m["model_version"].startswith("bundle-")
    assert m["series"] == {"golden-app/apdex": "prophet", "golden-app/jvm_heap_pct": "prophet"}

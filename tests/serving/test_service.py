"""The HTTP contract through BentoML's ASGI app (no server): answers, one error shape, limits, docs."""

from pathlib import Path

import pytest

from serving.http_edge import MAX_BODY_ENV
from serving.schemas import ErrorResponse

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "sample" / "golden_bundle"
APDEX = "golden-app/apdex"


def error_of(response) -> dict:
    """The error answer, checked against the one error schema every 4xx/5xx shares."""
    assert response.headers["content-type"] == "application/json", response.text
    return ErrorResponse.model_validate_json(response.content).error.model_dump()


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
    assert phrase in error_of(r)["message"]
    assert error_of(r)["code"] == {400: "bad_request", 404: "not_found"}[status]


@pytest.mark.parametrize(("body", "phrase"), [
    ({"series_id": APDEX, "now": "0001-01-01T00:00:00Z"}, "now: time must lie between 2000-01-01"),
    ({"series_id": APDEX, "now": "1900-01-01T00:00:00"}, "now: time must lie between 2000-01-01"),
    ({"series_id": APDEX, "now": "2999-01-01T00:00:00Z"}, "(server time + 1 day)"),
    ({"series_id": APDEX, "recent": [{"ts": "1970-01-01T00:00:00Z", "value": 1}]}, "recent.0.ts: time"),
    ('{"series_id": "golden-app/apdex", "threshold": NaN}', "threshold: Input should be a finite"),
    ('{"series_id": "golden-app/apdex", "context": {"gc": Infinity}}', "context.gc: Input should"),
    ('{"series_id": "golden-app/apdex", "context": {"gc": "-inf"}}', "context.gc: Input should be a valid"),
    ('{"series_id": "golden-app/apdex", "context": {"gc": false}}', "context.gc: Input should be a valid"),
    ({"series_id": APDEX, "now": 1_000_000_000}, "now: Input should be a valid datetime"),
    ('{"series_id": "golden-app/apdex", "recent": [{"ts": "2026-10-14T23:30:00Z", "value": NaN}]}',
     "recent.0.value: Input should be a finite"),
    ('{"series_id": "golden-app/apdex", "horizon_minutes": Infinity}', "horizon_minutes"),
    ("{not json", "Invalid JSON"),
    ("[1, 2]", "Input should be"),
])
def test_implausible_times_non_finite_numbers_and_bad_json_are_400(client, body, phrase):
    if isinstance(body, dict):
        r = client.post("/predict", json=body)
    else:
        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert phrase in error_of(r)["message"]


def test_user_input_echoed_in_an_error_is_shortened(client):
    r = client.post("/predict", json={"series_id": "x" * 199 + "/apdex"})
    assert r.status_code == 400  # longer than a series id can be
    r = client.post("/predict", json={"series_id": "x" * 190 + "/y"})
    assert r.status_code == 404
    assert "x" * 100 not in error_of(r)["message"] and "..." in error_of(r)["message"]
    r = client.post("/predict", json={"series_id": APDEX, "k" * 5000: 1})
    assert r.status_code == 400 and len(error_of(r)["message"]) < 300


def test_a_body_over_the_limit_is_413_before_it_is_parsed(client):
    big = b'{"series_id": "' + b"x" * (300 * 1024) + b'"}'
    r = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert error_of(r)["code"] == "payload_too_large" and MAX_BODY_ENV in error_of(r)["message"]

    def chunked():  # no Content-Length: the limit counts what arrives
        for _ in range(300):
            yield b" " * 1024

    r = client.post("/predict", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_body_that_is_not_json_is_415(client):
    r = client.post("/predict", content=b"--x\r\n", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 415 and error_of(r)["code"] == "unsupported_media_type"


def test_routing_errors_share_the_error_shape(client):
    assert error_of(client.get("/nope"))["code"] == "not_found"
    assert error_of(client.get("/predict"))["code"] == "method_not_allowed"


def test_an_unexpected_exception_is_500_without_its_text(client, monkeypatch, caplog):
    from serving.predictor import Predictor

    def broken(self, req):
        raise RuntimeError("secret internals /srv/model")

    monkeypatch.setattr(Predictor, "predict", broken)
    r = client.post("/predict", json={"series_id": APDEX})
    assert r.status_code == 500
    error = error_of(r)
    assert error["code"] == "internal_error" and "server log" in error["message"]
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "secret internals" in caplog.text  # the log has it


def test_api_description_and_swagger_page_load(client):
    page = client.get("/")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    spec = client.get("/docs.json")
    assert spec.status_code == 200
    doc = spec.json()
    assert doc["openapi"].startswith("3.")
    predict = doc["paths"]["/predict"]["post"]
    error_ref = "#/components/schemas/ErrorResponse"
    for status in ("400", "404", "413", "415", "500", "503"):
        assert predict["responses"][status]["content"]["application/json"]["schema"]["$ref"] == error_ref
    assert doc["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    request = doc["components"]["schemas"]["PredictRequest"]["properties"]
    assert request["series_id"]["example"] == "portal-demo/jvm_heap_pct" and request["series_id"]["nullable"]
    assert doc["components"]["schemas"]["PredictResponse"]["properties"]["crossing_at"]["nullable"]
    import schemathesis

    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI 3.0 meta-schema
    assert {op.ok().path for op in schema.get_all_operations()} >= {"/predict", "/model"}


def test_a_model_that_cannot_load_reports_why_as_503(client, tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text("{broken")
    monkeypatch.setenv("PREALERT_BUNDLE", str(tmp_path))
    from serving import http_edge
    from serving.service import PreAlert

    service = PreAlert()  # the worker stays up without a model, instead of crashing into restarts
    assert not service.__is_ready__()
    assert service.load_error.startswith(f"cannot load the bundle folder {tmp_path}: ")
    assert "manifest.json: not valid JSON" in service.load_error
    # one ASGI app per process (BentoML registers its metrics once): the edge asks the service
    monkeypatch.setattr(http_edge, "_load_error", lambda: service.load_error)
    ready, predict = client.get("/readyz"), client.post("/predict", json={"series_id": APDEX})
    assert ready.status_code == 503 and predict.status_code == 503
    assert error_of(ready) == {"code": "model_not_loaded", "message": service.load_error}
    assert error_of(predict) == error_of(ready)



def test_the_service_answers_without_parsing_any_prophet_model(client):
    """Serving loads schema-3 bundles without Prophet's JSON parser (it cost ~38 ms and ~3.5 MB a
    series); answers and /series need only the stored point model."""
    import bentoml

    assert client.post("/predict", json={"series_id": "golden-app/jvm_heap_pct", "threshold": 68}
                       ).status_code == 200
    assert client.post("/predict_batch", json={"items": [{"series_id": "golden-app/apdex"}]}
                       ).status_code == 200
    assert client.get("/series").status_code == 200
    models = bentoml.get_current_service().predictor.bundle.forecasters.values()
    assert any(m.kind_ == "prophet" for m in models)
    assert not any(m.prophet_loaded for m in models)

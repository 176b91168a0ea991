"""What the service does per request: BentoML's access log, traffic metrics and tracing spans off,
/metrics still showing prealert's counters; thresholds a metric can never reach refused with its range."""

from serving.service import PER_REQUEST_OFF, PreAlert

HEAP, APDEX = "golden-app/jvm_heap_pct", "golden-app/apdex"


def test_bentoml_per_request_extras_are_off_and_metrics_still_served(client):
    config = PreAlert.config
    for key, value in PER_REQUEST_OFF.items():
        assert config[key] == value
    from _bentoml_impl.server.app import ServiceAppFactory
    from bentoml._internal.server.http.access import AccessLogMiddleware
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    kinds = {m.cls for m in ServiceAppFactory(PreAlert).middlewares}
    assert AccessLogMiddleware not in kinds and RunnerTrafficMetricsMiddleware not in kinds
    assert client.post("/predict", json={"series_id": APDEX}).status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'prealert_requests_total{endpoint="/predict",status="200"}' in metrics.text
    assert "prealert_request_duration_seconds_bucket" in metrics.text


def test_a_threshold_outside_the_metrics_range_is_400_naming_the_range(client):
    for body, range_text in (({"series_id": APDEX, "threshold": 1.5}, "(0 to 1)"),
                             ({"series_id": HEAP, "threshold": 120}, "(0 to 100 %)"),
                             ({"series_id": HEAP, "threshold": -5}, "(0 to 100 %)"),
                             ({"rule": "apdex", "labels": {"service": "golden-app"}, "threshold": 2},
                              "(0 to 1)")):
        r = client.post("/predict", json=body)
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert range_text in message and "can never be crossed" in message, message
    at_bound = client.post("/predict", json={"series_id": APDEX, "threshold": 1.0, "direction": "above"})
    assert at_bound.status_code == 200, at_bound.text
    batch = client.post("/predict_batch", json={"items": [
        {"series_id": HEAP, "threshold": 68}, {"series_id": HEAP, "threshold": 101},
        {"series_id": APDEX, "threshold": 0.9}]}).json()
    assert [r["status"] for r in batch["results"]] == [200, 400, 200]
    alone = client.post("/predict", json={"series_id": HEAP, "threshold": 101}).json()
    assert batch["results"][1]["error"] == alone["error"]
    assert "threshold 101 is outside the values jvm_heap_pct can take (0 to 100 %)" in alone["error"][
        "message"]

"""The Prometheus source of /predict without 'recent': its cache, its mapping, its errors (in process).

The slow test against a real Prometheus is in test_prometheus.py; here the only Prometheus the
source is pointed at is a closed loopback port (a real refused connection, nothing faked).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serving.http_edge import _service
from serving.predictor import ModelLoadError, Predictor, SourceUnavailable, UnknownSeries
from serving.schemas import PredictBatchRequest, PredictRequest
from serving.server import free_port
from serving.source import PrometheusSource, _Fetched, samples_of, series_of
from serving.watch import Rule, load_rules
from training.bundle import ModelBundle

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "sample" / "golden_bundle"
HEAP = Rule(name="heap", query='label_replace(up, "service", "golden-app", "", "")', metric="jvm_heap_pct",
            threshold=90.0)
POD_HEAP = Rule(name="pod-heap", query="pod_heap", metric="jvm_heap_pct", threshold=90.0,
                entity_label="pod", entity_kind="pod")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def _samples(last: datetime, n: int = 30, step: timedelta = timedelta(minutes=1)) -> list:
    return [(last - (n - 1 - i) * step, 80.0 + 0.1 * i) for i in range(n)]


def _filled(source: PrometheusSource, rule: Rule, series: list, at: float) -> None:
    """The cache as one range query of ``rule`` would have left it at clock time ``at``."""
    end = datetime.now(UTC)
    source._cache[rule.query] = _Fetched(at, end - source.window, end, series)


@pytest.fixture(scope="module")
def bundle():
    return ModelBundle.load(GOLDEN)


def test_samples_keep_finite_values_as_utc_times():
    got = samples_of([(1_790_000_000.0, "81.5"), (1_790_000_060.0, "NaN"), (1_790_000_120.0, "+Inf"),
                      (1_790_000_180.5, "82")])
    assert got == [(datetime.fromtimestamp(1_790_000_000, UTC), 81.5),
                   (datetime.fromtimestamp(1_790_000_180.5, UTC), 82.0)]


def test_result_series_map_to_prealert_series_as_watch_does(bundle):
    resolve = lambda metric, labels: Predictor(bundle)._series_of_labels(metric, labels)[0]  # noqa: E731
    assert series_of(HEAP, {"service": "golden-app", "job": "x"}, resolve) == "golden-app/jvm_heap_pct"
    assert series_of(HEAP, {"job": "x"}, resolve) is None  # no entity label
    # a pod resolves to its workload from the pod name, as a request's labels do
    assert series_of(POD_HEAP, {"pod": "golden-app-7-abcde"}, resolve) == "golden-app/jvm_heap_pct"


def test_within_the_ttl_the_cache_answers_after_it_one_range_query_is_made(bundle):
    clock = Clock()
    source = PrometheusSource(_closed_url(), [HEAP], ttl_seconds=30, clock=clock)
    last = datetime(2026, 10, 14, 23, 45, tzinfo=UTC)
    _filled(source, HEAP, [({"service": "golden-app"}, _samples(last))], at=clock.t)
    predictor = Predictor(bundle, source=source)
    first = predictor.predict(PredictRequest(series_id="golden-app/jvm_heap_pct"))
    assert first.now == last  # the window's latest sample sets 'now'
    clock.t += 29.9
    assert predictor.predict(PredictRequest(series_id="golden-app/jvm_heap_pct")).now == last
    assert (source.range_queries, source.cache_hits) == (0, 2)
    clock.t += 0.2  # expired: the next request asks Prometheus (here a closed port) again
    with pytest.raises(SourceUnavailable, match="cannot reach Prometheus"):
        predictor.predict(PredictRequest(series_id="golden-app/jvm_heap_pct"))
    assert source.range_queries == 1
    with pytest.raises(SourceUnavailable):  # a failure is not cached: asked again
        predictor.predict(PredictRequest(series_id="golden-app/jvm_heap_pct"))
    assert source.range_queries == 2


def test_sent_observations_or_a_given_now_never_touch_the_source(bundle):
    source = PrometheusSource(_closed_url(), [HEAP], clock=Clock())
    predictor = Predictor(bundle, source=source)
    last = datetime(2026, 10, 14, 23, 40, tzinfo=UTC)
    sent = predictor.predict(PredictRequest.model_validate_json(json.dumps(
        {"series_id": "golden-app/jvm_heap_pct",
         "recent": [{"ts": t.isoformat(), "value": v} for t, v in _samples(last)]})))
    assert sent.now == last
    given = predictor.predict(PredictRequest(series_id="golden-app/jvm_heap_pct", now=last))
    assert given.now == last
    assert source.range_queries == 0


def test_a_series_the_source_does_not_return_is_unknown_with_what_it_returned(bundle):
    clock = Clock()
    source = PrometheusSource(_closed_url(), [HEAP], clock=clock)
    _filled(source, HEAP, [({"service": "other-app"}, _samples(datetime.now(UTC)))], at=clock.t)
    predictor = Predictor(bundle, source=source)
    with pytest.raises(UnknownSeries, match="returned no series 'golden-app/jvm_heap_pct' .*other-app"):
        predictor.predict(PredictRequest(series_id="golden-app/jvm_heap_pct"))
    with pytest.raises(UnknownSeries, match="no rule of the Prometheus source .* watches metric 'apdex'"):
        predictor.predict(PredictRequest(series_id="golden-app/apdex"))
    # in a batch: each item its own status, the source's failure a 503 of that item only
    down = Predictor(bundle, source=PrometheusSource(_closed_url(), [HEAP], clock=clock))
    batch = down.predict_batch(PredictBatchRequest(items=[
        {"series_id": "golden-app/jvm_heap_pct"}, {"series_id": "golden-app/apdex"},
        {"series_id": "golden-app/jvm_heap_pct", "now": "2026-10-14T23:00:00Z"}]))
    assert [r.status for r in batch.results] == [503, 404, 200]
    assert batch.results[0].error.code == "source_unavailable"


def test_the_environment_configures_the_source(monkeypatch, tmp_path):
    monkeypatch.delenv("PREALERT_PROMETHEUS_URL", raising=False)
    assert PrometheusSource.from_environment() is None
    monkeypatch.setenv("PREALERT_PROMETHEUS_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("PREALERT_PROMETHEUS_RULES", raising=False)
    with pytest.raises(ValueError, match="PREALERT_PROMETHEUS_RULES is not"):
        PrometheusSource.from_environment()
    rules = tmp_path / "rules.yml"
    rules.write_text(f"rules:\n  - {{name: heap, query: '{HEAP.query}', metric: jvm_heap_pct}}\n")
    monkeypatch.setenv("PREALERT_PROMETHEUS_RULES", str(rules))
    monkeypatch.setenv("PREALERT_PROMETHEUS_TTL_SECONDS", "5")
    monkeypatch.setenv("PREALERT_PROMETHEUS_STEP", "15s")
    source = PrometheusSource.from_environment()
    assert (source.ttl, source.step, source.window) == (5.0, timedelta(seconds=15), timedelta(minutes=90))
    assert [r.name for r in source.rules] == [r.name for r in load_rules(rules)]
    monkeypatch.setenv("PREALERT_PROMETHEUS_TTL_SECONDS", "soon")
    monkeypatch.setenv("PREALERT_BUNDLE", str(GOLDEN))
    with pytest.raises(ModelLoadError, match="Prometheus source: PREALERT_PROMETHEUS_TTL_SECONDS"):
        Predictor.from_environment()


def test_the_service_answers_503_source_unavailable_in_the_one_error_shape(client, bundle, monkeypatch):
    follower = _service().follower
    down = PrometheusSource(_closed_url(), [HEAP])
    monkeypatch.setattr(follower, "predictor", Predictor(bundle, follower.predictor.catalog, source=down))
    r = client.post("/predict", json={"series_id": "golden-app/jvm_heap_pct"})
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert err["code"] == "source_unavailable" and "cannot reach Prometheus" in err["message"], err
    r = client.post("/predict", json={"series_id": "golden-app/apdex"})
    assert r.status_code == 404 and "no rule of the Prometheus source" in r.json()["error"]["message"]
    r = client.post("/alerts", json={"series": [{"series_id": "golden-app/jvm_heap_pct"}]})
    assert r.status_code == 200 and r.json()["skipped"][0]["error"]["code"] == "source_unavailable"
    assert client.get("/status").json()["prometheus_source"]["range_queries"] == 2

"""A batch answered with array operations across series says, item for item, what /predict says alone.

A small trained bundle (saved, then loaded) with Prophet series of different parameters, a
workload anomaly detector, and two linear-fallback series; a mixed batch of good items, bad
items, rules, unknown pods and fallback series; compared field by field (floats to 1e-9).
"""

import json
import math
import re
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from pydantic import TypeAdapter

from features import schema as s
from serving.predictor import Predictor, _crossing_within_lead, _item_error, _response
from serving.rules import load_catalog
from serving.schemas import (
    BATCH_TIME_CHARS,
    BATCH_TIME_PATTERN,
    AlertsRequest,
    AlertsResponse,
    BatchItem,
    PredictBatchRequest,
    PredictBatchResponse,
    PredictRequest,
    PredictResponse,
    SkippedSeries,
)
from serving.server import free_port, start_service, stop_service, wait_ready
from training.bundle import ModelBundle
from training.predict import predict_series
from training.predict_many import Query, predict_many
from training.threshold import ProbabilityCalibration
from training.train import TrainConfig, train_bundle

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "data" / "sample"))
from make_golden_bundle import START, golden_series  # noqa: E402

HEAP, APDEX, OTHER = "golden-app/jvm_heap_pct", "golden-app/apdex", "other-app/jvm_heap_pct"
FLAT, SHORT = "flat-app/cpu_pct", "short-app/jvm_heap_pct"


def _series(entity: str, metric: str, y: np.ndarray) -> pl.DataFrame:
    n = y.size
    return pl.DataFrame({
        s.SERIES_ID: s.series_id(entity, metric), s.ENTITY: entity, s.METRIC: metric,
        s.TS: [START + timedelta(minutes=15 * i) for i in range(n)], s.VALUE: y,
        s.N_PODS: pl.Series([3] * n, dtype=pl.UInt32), s.FILLED: False,
    }).with_columns(pl.col(s.TS).dt.cast_time_unit("us"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> ModelBundle:
    rng = np.random.default_rng(11)
    hours = np.arange(288) / 4
    frame = pl.concat([
        golden_series(),
        _series("other-app", "jvm_heap_pct",
                40 + 0.3 * hours + 3 * np.cos(2 * np.pi * hours / 24) + rng.normal(0, 0.8, 288)),
        _series("flat-app", "cpu_pct", np.full(288, 20.0)),  # flat: the linear fallback
        _series("short-app", "jvm_heap_pct", 50 + 0.05 * np.arange(90) + rng.normal(0, 0.3, 90)),
    ], how="vertical_relaxed")
    result = train_bundle(frame, TrainConfig(holdout_hours=12, n_jobs=1,
                                             forecaster={"min_history_hours": 24}))
    folder = tmp_path_factory.mktemp("mixed") / "bundle"
    result.bundle.save(folder)
    loaded = ModelBundle.load(folder)
    kinds = {sid: m.kind_ for sid, m in loaded.forecasters.items()}
    assert kinds == {HEAP: "prophet", APDEX: "prophet", OTHER: "prophet", FLAT: "linear", SHORT: "linear"}
    assert "golden-app" in loaded.detectors
    return loaded


def same(a, b, where: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ (floats beyond 1e-9), as readable lines; empty if they agree."""
    if isinstance(a, float) and isinstance(b, float):
        ok = math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
        return [] if ok else [f"{where}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in same(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in same(x, y, f"{where}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{where}: {a!r} != {b!r}"]


def queries(bundle: ModelBundle, n: int = 160) -> list[Query]:
    """Seeded questions over every series: observation counts from none to 90 (some NaN, some out
    of order), thresholds on both sides of the level, both directions, horizons up to too long."""
    rng = np.random.default_rng(3)
    ids = sorted(bundle.forecasters)
    out = []
    for k in range(n):
        sid = ids[k % len(ids)]
        model = bundle.forecasters[sid]
        end = model.last_ts_ + timedelta(minutes=int(rng.integers(0, 600)))
        if k % 11 == 0:  # inside the training history, before the trend's last changepoint
            end = model.first_ts_ + timedelta(hours=30)
        level = float(model.expected(np.array([np.datetime64(end.replace(tzinfo=None), "us")]))[0])
        spread = 3 * max(model.sigma_, 0.01 * abs(level), 1e-3)
        count = int(rng.choice([0, 1, 3, 10, 30, 90]))
        drift = rng.normal(0, spread / 30)
        recent = [(end - timedelta(minutes=count - 1 - i), level + drift * i + rng.normal(0, spread / 3))
                  for i in range(count)]
        if count > 5 and k % 4 == 0:
            recent[2] = (recent[2][0], float("nan"))
            recent[0], recent[3] = recent[3], recent[0]
        threshold = level + float(rng.choice([-2, -0.5, 0.3, 1, 2.5])) * spread
        context = {"apdex": 0.9} if sid == HEAP and k % 3 == 0 else None
        out.append(Query(sid, threshold, str(rng.choice(["above", "below"])),
                         float(rng.choice([15, 60, 120, 240, 360, 1000])), recent,
                         None if count else end, context))
    out.append(Query("nope/jvm_heap_pct", 1.0, "above", 60))
    return out


def test_predict_many_equals_predict_series_for_every_query(bundle):
    asked = queries(bundle)
    many = predict_many(bundle, asked)
    kinds = {"answer": 0, "error": 0, "fallback": 0, "anomaly": 0, "crossing": 0, "alert": 0}
    for q, got in zip(asked, many, strict=True):
        try:
            want = predict_series(bundle, q.series_id, q.threshold, q.direction, q.horizon_minutes,
                                  recent=q.recent, now=q.now, context=q.context)
        except Exception as exc:  # the batch gives the item the same error
            assert type(got) is type(exc) and str(got) == str(exc), (q, got, exc)
            kinds["error"] += 1
            continue
        assert not isinstance(got, Exception), (q, got)
        assert same(got.as_dict(), want.as_dict(), q.series_id) == []
        kinds["answer"] += 1
        kinds["fallback"] += want.model_kind == "linear"
        kinds["anomaly"] += want.anomaly_score is not None
        kinds["crossing"] += want.minutes_to_threshold not in (None, 0.0)
        kinds["alert"] += want.alert
    assert all(kinds.values()), kinds  # every kind of answer and error was compared


def test_answer_rows_equal_predict_series_for_every_query(bundle):
    """The rows the service writes (``predict_many(..., as_rows=True)``: no ``Prediction`` per answer)
    hold every field of ``predict_series``'s answer, in the response's order, with its message;
    over held-on alerts, crossings, already crossed, alerts whose earlier checks precede the
    observations (not walked by the batch), fallback series (still a ``Prediction``) and errors."""
    from training.predict_many import ANSWER_FIELDS

    served = tuple(f for f in PredictResponse.model_fields if f not in ("resolved_by", "rule"))
    assert served == ANSWER_FIELDS
    asked = queries(bundle, 400)
    rows = predict_many(bundle, asked, as_rows=True)
    kinds = dict.fromkeys(("row", "prediction", "error", "held", "crossing", "crossed", "alert", "short"), 0)
    for q, got in zip(asked, rows, strict=True):
        try:
            want = predict_series(bundle, q.series_id, q.threshold, q.direction, q.horizon_minutes,
                                  recent=q.recent, now=q.now, context=q.context)
        except Exception as exc:
            assert type(got) is type(exc) and str(got) == str(exc), (q, got, exc)
            kinds["error"] += 1
            continue
        if not isinstance(got, dict):  # answered by the one-series path itself
            assert same(got.as_dict(), want.as_dict(), q.series_id) == []
            kinds["prediction"] += 1
            continue
        assert tuple(got) == ANSWER_FIELDS
        expected = {**want.as_dict(), "message": want.sentence(),  # the answer names each metric and its z
                    "anomaly_top_metrics": [{"metric": m["metric"], "z": m["z"]}
                                            for m in want.anomaly_top_metrics]}
        assert same(dict(got), {k: expected[k] for k in ANSWER_FIELDS}, q.series_id) == []
        kinds["row"] += 1
        kinds["held"] += want.keep_firing_minutes_left is not None
        kinds["crossing"] += want.minutes_to_threshold not in (None, 0.0)
        kinds["crossed"] += want.already_crossed
        kinds["alert"] += want.alert
        kinds["short"] += "shortened from" in want.alert_rule
    assert all(kinds.values()), kinds  # every kind of answer and error was compared


def test_batch_holds_paths_in_range_and_answers_the_chosen_timing(bundle):
    """A bundle whose calibration answers another quantile than the median, and thresholds near
    and at the edges of APDEX's [0, 1] and heap's [0, 100]: the batch still says what one says."""
    import copy
    import dataclasses

    tuned = copy.copy(bundle)
    tuned.forecasters = dict(bundle.forecasters)
    for sid in (HEAP, APDEX):
        model = copy.copy(bundle.forecasters[sid])
        fitted = model.calibrations_ or {120.0: ProbabilityCalibration()}
        model.calibrations_ = {h: dataclasses.replace(c, timing=0.3) for h, c in fitted.items()}
        tuned.forecasters[sid] = model
    asked = []
    for sid, edges in ((APDEX, (0.0, 0.5, 0.97, 0.999, 1.0)), (HEAP, (0.0, 99.0, 100.0))):
        model = tuned.forecasters[sid]
        for k, threshold in enumerate(edges):
            for direction in ("above", "below"):
                end = model.last_ts_ + timedelta(minutes=30 * k)
                # observations that run up to (or past) the top of the range: a forecast beyond it
                top = edges[-1]
                recent = [(end - timedelta(minutes=29 - i), top * (0.8 + 0.01 * i)) for i in range(30)]
                asked.append(Query(sid, threshold, direction, 120.0, recent))
    many = predict_many(tuned, asked)
    timed = 0
    for q, got in zip(asked, many, strict=True):
        want = predict_series(tuned, q.series_id, q.threshold, q.direction, q.horizon_minutes,
                              recent=q.recent)
        assert not isinstance(got, Exception), (q, got)
        assert same(got.as_dict(), want.as_dict(), f"{q.series_id} {q.direction} {q.threshold}") == []
        timed += want.minutes_to_threshold not in (None, 0.0)
    assert timed >= 2  # some answers gave a crossing time (the 0.3 quantile of the paths')


def mixed_items() -> list[dict]:
    recent = [{"ts": f"2026-10-15T00:{m:02d}:00Z", "value": 60.0 + 0.2 * m} for m in range(40)]
    low = [{"ts": f"2026-10-15T00:{m:02d}:00Z", "value": 20.0 + 0.01 * m} for m in range(10)]
    return [
        {"series_id": HEAP, "threshold": 68, "recent": recent},
        {"series_id": HEAP, "threshold": 61, "recent": recent, "context": {"apdex": 0.9}},  # crossed
        {"series_id": APDEX, "threshold": 0.94, "direction": "below", "recent": recent[:3]},
        {"series_id": OTHER, "threshold": 70, "horizon_minutes": 360, "recent": recent[-10:]},
        {"series_id": OTHER, "threshold": 30, "direction": "below"},
        {"series_id": FLAT, "threshold": 21, "recent": low},  # the linear fallback
        {"series_id": SHORT, "threshold": 60, "horizon_minutes": 120},
        {"series_id": HEAP, "recent": [{"ts": "1999-01-01T00:00:00Z", "value": 1.0}]},  # bad time
        {"series_id": HEAP, "threshold": "68"},  # a string is not a number here
        {"series_id": HEAP, "horizon_minutes": -1, "direction": "sideways", "extra": 1},
        {"labels": {}},  # names no series
        {"metric": "jvm_heap_pct", "labels": {"service": "other-app"}, "now": "2026-10-15T00:30:00Z"},
        {"series_id": "nope/jvm_heap_pct"},
        {"rule": "jvm_heap", "labels": {"pod": "golden-app-7f9c-x2x"}, "recent": recent[-5:]},
        {"metric": "apdex", "labels": {"pod": "brand-new-pod-7f9c8d-abcde"}},  # unknown workload
        {"rule": "apdex", "labels": {"service": "golden-app"}},
        {"series_id": APDEX, "horizon_minutes": 1000},  # beyond the learned errors
        {"series_id": HEAP, "threshold": 68, "recent": [  # an offset and a naive (UTC) time
            {"ts": "2026-10-15T02:10:00+02:00", "value": 61.0},
            {"ts": "2026-10-15T00:11:30.25", "value": 61.5}]},
        {"series_id": HEAP, "now": "1999-01-01T00:00:00Z"},  # 'now' outside the plausible window
        {"series_id": HEAP, "recent": [*recent[:3], {"ts": "2099-01-01T00:00:00Z", "value": 1.0}]},  # future
        {"series_id": HEAP, "recent": [{"ts": "2026-10-15T00:00:00Z", "value": 1.0, "x": 2}]},  # extra key
        {"series_id": HEAP, "recent": [{"ts": 1760486400, "value": 1.0}]},  # a number is not a time here
        {"series_id": HEAP, "threshold": 68, "recent": [  # times the batch reads itself
            {"ts": "2026-10-15T00:20:30.123456Z", "value": 61.0}, {"ts": "2026-10-15T00:21Z", "value": 61.2},
            {"ts": "2026-10-15T00:22:00.5", "value": 61.4}]},
        {"series_id": HEAP, "threshold": 68, "recent": [  # ... and ones it leaves to /predict's reading
            {"ts": "2026-10-15 00:23:00Z", "value": 61.0}, {"ts": "2026-10-15T00:24:00z", "value": 61.2},
            {"ts": "2026-10-15T00:25:00+00:00", "value": 61.4}]},
        {"series_id": HEAP, "recent": [{"ts": "2026-02-30T00:00:00Z", "value": 1.0}]},  # no such day
        {"series_id": HEAP, "recent": [{"ts": "2026-10-15T00:00:00.1234567Z", "value": 1.0}]},  # 7 digits
    ]


def test_predictor_batch_items_equal_the_one_series_path(bundle):
    predictor = Predictor(bundle)
    items = mixed_items() * 3  # repeats: the same item in three places answers the same
    batch = predictor.predict_batch(PredictBatchRequest(items=items))
    assert [r.index for r in batch.results] == list(range(len(items)))
    statuses = set()
    for item, result in zip(items, batch.results, strict=True):
        try:  # the one-series path of training.predict, as /predict answered before batches shared it
            q, how, rule = predictor.resolve(PredictRequest.model_validate_json(json.dumps(item)))
            alone = predict_series(bundle, q.series_id, q.threshold, q.direction, q.horizon_minutes,
                                   recent=q.recent, now=q.now, context=q.context)
            single = _response(alone, how, rule)
        except Exception as exc:
            status, code, message = _item_error(exc, "single")
            assert (result.status, result.error.code, result.error.message) == (status, code, message)
            assert result.answer is None
            statuses.add(status)
            continue
        assert result.status == 200 and result.error is None, (item, result)
        assert same(json.loads(result.answer.model_dump_json()), json.loads(single.model_dump_json())) == []
        statuses.add(200)
    assert statuses == {200, 400, 404}
    assert (batch.answered, batch.failed) == (sum(r.status == 200 for r in batch.results),
                                              sum(r.status != 200 for r in batch.results))


def test_the_batch_json_is_what_the_response_models_write(bundle):
    """The batch writes its JSON without a model object per item: it is byte for byte what
    ``PredictBatchResponse`` writes for the same content (field order, floats, times, nulls)."""
    body = json.dumps({"items": mixed_items()}).encode()
    written = Predictor(bundle).predict_batch_json(body)
    assert PredictBatchResponse.model_validate_json(written).model_dump_json().encode() == written


def test_batch_items_are_read_with_predict_requests_checks():
    """``BatchItem`` (the batch's one-pass read) holds every field and constraint of
    ``PredictRequest`` but the two checks the batch runs across items (times' window, a series named)."""
    def fields(schema: dict) -> dict:
        defs = schema.get("$defs", {})

        def plain(node):
            if isinstance(node, dict):
                if "$ref" in node:
                    return plain(defs[node["$ref"].split("/")[-1]])
                return {k: plain(v) for k, v in node.items()
                        if k not in ("description", "examples", "title", "default", "required")}
            if isinstance(node, list):
                return [plain(v) for v in node]
            return node
        return plain(schema)["properties"]

    batch, single = fields(TypeAdapter(BatchItem).json_schema()), fields(PredictRequest.model_json_schema())
    # observation times: the batch reads a UTC subset of ISO-8601 as text (any other form of time
    # sends its item to be validated alone; the form is checked over all times at once), the rest
    # is the same
    times = batch["recent"]["items"]["properties"].pop("ts")
    assert times == {"type": "string", "maxLength": BATCH_TIME_CHARS}
    assert single["recent"]["items"]["properties"].pop("ts")["format"] == "date-time"
    assert batch == single


def test_the_batch_reads_the_times_the_pattern_names_and_no_others():
    """The batch's check of its times' form over arrays says what ``BATCH_TIME_PATTERN`` says
    (a regex whose ``$`` ends the text, as pydantic's Rust engine reads it), on edge cases and on
    seeded mutations of valid times (a character changed, dropped or added)."""
    from serving.predictor import _utc_us, batch_time_form

    regex = re.compile(BATCH_TIME_PATTERN.replace("$", r"\Z"))
    texts = ["2026-10-15T00:30", "2026-10-15T00:30Z", "2026-10-15T23:59:59", "2026-10-15T00:30:00Z",
             "2026-10-15T00:30:00.1", "2026-10-15T00:30:00.123456Z", "2026-10-15T00:30:00.1234567",
             "2026-10-15T00:30:00.", "2026-10-15T00:30:0", "2026-10-15T24:00", "2026-10-15T00:60",
             "2026-10-15T00:00:60", "2026-13-01T00:00", "2026-00-01T00:00", "2026-10-00T00:00",
             "2026-10-32T00:00", "2026-02-30T00:00", "2026-10-15 00:30", "2026-10-15T00:30z",
             "2026-10-15T00:30+02:00", "2026-10-15T00:30Z\n", "2026-10-15T00:30\x00", "", "Z",
             "2026-10-15", "+2026-10-15T00:30", "2026-10-15T00:3Z", "२०२६-10-15T00:30", "2026-10-15T00:30ZZ"]
    rng = np.random.default_rng(5)
    alphabet = "0123456789-:TZ.z +\n"
    for _ in range(3000):
        text = list(texts[int(rng.integers(0, 6))])
        for _ in range(int(rng.integers(1, 3))):
            at, kind = int(rng.integers(0, len(text) + 1)), int(rng.integers(0, 3))
            char = alphabet[int(rng.integers(0, len(alphabet)))]
            if kind == 0 and at < len(text):
                text[at] = char
            elif kind == 1 and at < len(text):
                del text[at]
            else:
                text.insert(at, char)
        texts.append("".join(text)[:BATCH_TIME_CHARS])
    array = np.array(texts, dtype=f"U{BATCH_TIME_CHARS}")
    ok, zulu = batch_time_form(array.view(np.uint32).reshape(len(texts), -1),
                               np.array([len(t) for t in texts]))
    want = [regex.match(t) is not None for t in texts]
    assert ok.tolist() == want, [t for t, a, b in zip(texts, ok.tolist(), want, strict=True) if a != b]
    assert zulu.tolist() == [w and t.endswith("Z") for t, w in zip(texts, want, strict=True)]
    assert 200 < sum(want) < len(texts) - 200  # both kinds were compared
    # read: every valid time as numpy reads it without its 'Z'; an item holding any other is left out
    valid = [t for t, w in zip(texts, want, strict=True) if w and not t.startswith("2026-02-30")]
    us, unread = _utc_us([*valid, "2026-02-30T00:00", "2026-10-15 00:30"], [len(valid), 1, 1])
    assert unread == [1, 2] and us[len(valid):].tolist() == [0, 0]
    assert us[:len(valid)].tolist() == np.array([t.rstrip("Z") for t in valid],
                                                 dtype="datetime64[us]").view(np.int64).tolist()


@pytest.mark.slow
def test_a_real_server_answers_each_batch_item_as_predict_does(bundle, tmp_path):
    folder = tmp_path / "bundle"
    bundle.save(folder)
    port = free_port()
    proc = start_service(port, bundle=folder, env={"PREALERT_RELOAD_SECONDS": "0"},
                         log_file=tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, timeout=300, log_file=tmp_path / "serve.log")
        items = mixed_items()
        with httpx.Client(base_url=url, timeout=60) as client:
            batch = client.post("/predict_batch", json={"items": items}).json()["results"]
            for item, result in zip(items, batch, strict=True):
                single = client.post("/predict", json=item)
                assert result["status"] == single.status_code, (item, single.text)
                if single.status_code == 200:
                    assert same(result["answer"], single.json()) == [] and result["error"] is None
                else:  # the two requests may fall either side of a minute: the limit names it
                    assert _server_minute(result["error"]) == _server_minute(single.json()["error"])
                    assert result["answer"] is None
    finally:
        stop_service(proc)


def _server_minute(error: dict) -> dict:
    """An error with the server's clock (in 'time must lie ... (server time + 1 day)') masked."""
    return {**error, "message": re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ \(server time",
                                       "<server time>Z (server time", error["message"])}


def _alerts_one_pair_at_a_time(predictor: Predictor, req: AlertsRequest) -> AlertsResponse:
    """/alerts as it was answered before it shared the batch's path: ``predict_series`` per series
    and rule, in turn (a series' first failure skips it, the pairs before it kept)."""
    wanted = req.rules if req.rules is not None else list(predictor.catalog.rules)
    alerts, skipped, checked = [], [], 0
    for i, obs in enumerate(req.series):
        try:
            sid, how, rules = predictor.rules_of(obs, wanted)
            for rule in rules:
                checked += 1
                p = predict_series(predictor.bundle, sid, rule.threshold, rule.direction,
                                   rule.horizon_minutes, recent=[(o.ts, o.value) for o in obs.recent],
                                   context=obs.context)
                hit = _crossing_within_lead(p, sid, how, rule)
                if hit is not None:
                    alerts.append(hit)
        except Exception as exc:
            status, code, message = _item_error(exc, "reference")
            skipped.append(SkippedSeries(index=i, series=obs.series_id or f"{obs.metric} {obs.labels}",
                                         error={"code": code, "message": message}))
    alerts.sort(key=lambda a: (not a.already_crossed, a.minutes_to_threshold or 0.0, -a.probability,
                               a.series_id, a.rule))
    return AlertsResponse(model_version=predictor.model_version, checked=checked, alerts=alerts,
                          skipped=skipped)


def test_alerts_answer_every_series_and_rule_as_the_one_series_path(bundle, tmp_path):
    """/alerts answers all its (series, rule) pairs in one ``predict_many``: the same alerts,
    order, skipped series and count of checked pairs as ``predict_series`` pair by pair."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("overrides:\n"
                     "  - {rule: jvm_heap, entity: golden-app, threshold: 62}\n"
                     "  - {rule: jvm_heap, entity: other-app, threshold: 45}\n"
                     "  - {rule: apdex, entity: golden-app, threshold: 0.97}\n"
                     "  - {rule: cpu, entity: flat-app, threshold: 20.05}\n")
    predictor = Predictor(bundle, load_catalog(rules))
    recent = [{"ts": f"2026-10-15T00:{m:02d}:00Z", "value": 60.0 + 0.1 * m} for m in range(40)]
    low = [{"ts": f"2026-10-15T00:{m:02d}:00Z", "value": 20.0 + 0.01 * m} for m in range(10)]
    req = AlertsRequest.model_validate_json(json.dumps({"series": [
        {"series_id": HEAP, "recent": recent},  # crosses 62 within the hour: soon, or crossed
        {"series_id": HEAP, "recent": recent[:3], "context": {"apdex": 0.9}},
        {"series_id": OTHER},
        {"metric": "jvm_heap_pct", "labels": {"service": "other-app"}, "recent": recent[-10:]},
        {"series_id": APDEX, "recent": [{"ts": "2026-10-15T00:00:00Z", "value": 0.96}]},  # crossed
        {"series_id": FLAT, "recent": low},  # the linear fallback, crossed
        {"series_id": SHORT},
        {"series_id": "nope/jvm_heap_pct"},  # unknown series
        {"metric": "jvm_heap_pct", "labels": {}},  # names no series
        {"series_id": "golden-app/no_such_metric"},  # no rule watches it
    ]}))
    got = predictor.alerts(req)
    want = _alerts_one_pair_at_a_time(predictor, req)
    assert got.model_dump() == want.model_dump()
    assert len(got.alerts) >= 3 and any(a.already_crossed for a in got.alerts)
    assert len(got.skipped) == 3 and got.checked >= 7


def test_a_predictor_runs_blas_on_one_thread_unless_the_environment_chose(bundle, monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas  # numpy's BLAS is there to limit
    with threadpool_limits(limits=2, user_api="blas"):  # restored afterwards, whatever Predictor sets
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        Predictor(bundle)
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {2}
        monkeypatch.delenv("OMP_NUM_THREADS")
        Predictor(bundle)
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {1}


def test_the_batch_json_is_the_same_with_orjson_and_with_pydantic(bundle, monkeypatch):
    """The batch writes its answer with orjson; pydantic's writer (its fallback) gives the same bytes
    for a mixed batch of answers and errors (fails if either writer's output drifts)."""
    import serving.predictor as predictor_module

    body = json.dumps({"items": mixed_items()}).encode()
    fast = Predictor(bundle).predict_batch_json(body)

    class NoOrjson:
        OPT_UTC_Z = 0

        @staticmethod
        def dumps(*args, **kwargs):
            raise TypeError("orjson refused")

    monkeypatch.setattr(predictor_module, "orjson", NoOrjson)
    assert Predictor(bundle).predict_batch_json(body) == fast
    assert {r["status"] for r in json.loads(fast)["results"]} == {200, 400, 404}


def test_the_json_writer_writes_every_kind_of_value_as_pydantic_does():
    from datetime import UTC, datetime, timezone

    import pydantic_core

    from serving.predictor import write_json

    values = [0.1, -0.0, 1e-05, 1.5e-7, 1e16, 1e20, 2.5e15, 5e-324, 123456789.123456789, 90, -3, True, None,
              float("nan"), float("inf"), -float("inf"), "plain", "é ü 漢字 😀", "quote \" back \\ slash",
              "control \x00 \x1f \t \n \r", "\u2028 \u2029 </script>",
              datetime(2026, 10, 15, 0, 30, tzinfo=UTC), datetime(2026, 10, 15, 0, 30, 0, 500000, tzinfo=UTC),
              datetime(2026, 10, 15, 0, 30, 0, 123),
              datetime(2026, 10, 15, 9, 30, tzinfo=timezone(timedelta(hours=9))),
              [], {}, [{"nested": [1.25, None, "x"]}]]
    doc = {"values": values, "by_key": {str(i): v for i, v in enumerate(values)}}
    assert write_json(doc) == pydantic_core.to_json(doc, inf_nan_mode="null")
    # values orjson does not take fall back to pydantic's writer, whole
    for odd in (np.float64(1.5), 2**70):
        assert write_json({"x": odd, "y": [1.0]}) == pydantic_core.to_json({"x": odd, "y": [1.0]},
                                                                           inf_nan_mode="null")


def test_a_batch_leaves_the_garbage_collector_as_it_found_it(bundle):
    import gc

    predictor = Predictor(bundle)
    body = json.dumps({"items": mixed_items()}).encode()
    assert gc.isenabled()
    predictor.predict_batch_json(body)
    assert gc.isenabled()
    with pytest.raises(ValueError):
        predictor.predict_batch_json(b"not json")
    assert gc.isenabled()
    gc.disable()
    try:
        predictor.predict_batch_json(body)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_batch_caches_let_a_replaced_models_entries_go():
    """The per-model caches of the batch (keyed by identity) drop a model's entries when the model is
    freed (a hot reload), so a new model at the same address never reads the old one's facts."""
    import gc
    import weakref

    import training.predict_many as pm

    golden = ModelBundle.load(ROOT / "data" / "sample" / "golden_bundle")
    (answer,) = predict_many(golden, [Query(HEAP, 95.0, "above", 240)])
    assert not isinstance(answer, Exception), answer
    sid = answer.series_id
    key, alive = id(golden.forecasters[sid]), weakref.ref(golden.forecasters[sid])
    assert key in pm._FACTS and key in pm._PARAMS and key in pm._CALENDARS
    del golden, answer
    pm._RECENT_LAYOUTS.clear()  # the last few batches' layouts hold their models (and so the entries)
    gc.collect()
    assert alive() is None
    assert key not in pm._FACTS and key not in pm._PARAMS and key not in pm._CALENDARS

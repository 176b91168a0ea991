"""The pure predictor behind the service: a loaded bundle plus request-to-answer translation."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import os
from datetime import UTC, datetime
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
import pydantic_core
from pydantic import TypeAdapter, ValidationError

from features import schema as s
from features.build import workload_of_pod
from serving.pods import PodDirectory
from serving.rules import AlertingRule, Catalog, RulesError, load_catalog
from serving.schemas import (
    BATCH_TIME_CHARS,
    ECHO_CHARS,
    AlertsRequest,
    AlertsResponse,
    BatchItems,
    PredictBatchRequest,
    PredictBatchResponse,
    PredictedAlert,
    PredictRequest,
    PredictResponse,
    RuleInfo,
    RulesList,
    SeriesInfo,
    SeriesList,
    SeriesObservations,
    SkippedSeries,
    plausible_seconds,
    positive_int,
    shortened,
    validation_message,
)
from training.bundle import ModelBundle
from training.predict import Prediction
from training.predict_many import Query, predict_many, stack_error_paths

if TYPE_CHECKING:
    from serving.source import PrometheusSource

__all__ = ["ECHO_CHARS", "BUNDLE_ENV", "BatchTooLarge", "ModelLoadError", "Predictor", "SourceUnavailable",
           "UnknownSeries",
           "max_batch", "one_line", "shortened"]

BUNDLE_ENV = "PREALERT_BUNDLE"
MAX_BATCH_ENV = "PREALERT_MAX_BATCH"
DEFAULT_MAX_BATCH = 1000
UNEXPECTED_ITEM = "unexpected error on this item; the server log has the details"

logger = logging.getLogger("prealert.predictor")
PREDICTION_FIELDS = tuple(f.name for f in dataclasses.fields(Prediction))


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line: its type when the message is empty, never a traceback."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return shortened(text, limit)


def max_batch() -> int:
    """Items a batch may hold: ``PREALERT_MAX_BATCH`` (a positive integer) or 1000."""
    return positive_int(MAX_BATCH_ENV, DEFAULT_MAX_BATCH, "items")


class UnknownSeries(LookupError):
    """The request names a series the model bundle has no model for."""


class SourceUnavailable(RuntimeError):
    """The request sent no recent observations and the Prometheus source could not give them (503)."""


class ModelLoadError(RuntimeError):
    """The service has no model to answer with; the message says why in one line."""


class BatchTooLarge(ValueError):
    """A batch with more items than the server's limit."""


#: set by the operator, these choose the BLAS threads themselves; the service leaves them be
_BLAS_THREAD_ENVS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread() -> None:
    """Run this process's BLAS (numpy's matrix products) on one thread, unless the environment
    chose a number of threads. A service answers requests side by side; BLAS threads on top of
    that only wait for each other: the batch's (59 x 26) @ (26 x 1,000) seasonality product took
    1.4 ms with OpenBLAS's two threads on the busy 2-core bench machine, 0.09 ms with one."""
    if any(os.environ.get(name) for name in _BLAS_THREAD_ENVS):
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def load_bundle_from_environment() -> ModelBundle:
    """A bundle folder from ``PREALERT_BUNDLE`` if set, else the registry's ``@champion``.

    Any failure to load becomes a ``ModelLoadError`` naming the source and the cause.
    """
    folder = os.environ.get(BUNDLE_ENV)
    if folder:
        try:
            return ModelBundle.load(Path(folder))
        except Exception as exc:
            raise ModelLoadError(f"cannot load the bundle folder {folder}: {one_line(exc)}") from exc
    # imported here: a bundle folder is served without importing mlflow (a large heap to collect)
    from training.registry import load_champion, tracking_uri

    try:
        return load_champion()
    except LookupError as exc:  # no @champion: the message says what to do
        raise ModelLoadError(one_line(exc)) from exc
    except Exception as exc:
        raise ModelLoadError(f"cannot load prealert@champion from {tracking_uri()}: {one_line(exc)}") from exc


class Predictor:
    def __init__(self, bundle: ModelBundle, catalog: Catalog | None = None, pods: PodDirectory | None = None,
                 source: PrometheusSource | None = None):
        self.bundle = bundle
        one_blas_thread()
        stack_error_paths(bundle)  # the batch reads every series' error paths in place, from now on
        self.catalog = catalog if catalog is not None else load_catalog()
        self.pods = pods
        self.source = source  # where the recent window comes from when a request sends none

    @classmethod
    def from_environment(cls, catalog: Catalog | None = None, pods: PodDirectory | None = None) -> Predictor:
        """The bundle of :func:`load_bundle_from_environment`, the rules catalogue (plus
        ``PREALERT_RULES``), the pods table of ``PREALERT_PODS`` and the Prometheus source of
        ``PREALERT_PROMETHEUS_URL``; a bad rules file, pods path or source configuration is a
        ``ModelLoadError`` too (the service must not start without them)."""
        try:
            catalog = catalog or load_catalog()
            pods = pods or PodDirectory.from_environment()
        except (RulesError, OSError) as exc:
            raise ModelLoadError(one_line(exc, 500)) from exc
        return cls(load_bundle_from_environment(), catalog, pods, source_from_environment())

    def with_bundle(self, bundle: ModelBundle) -> Predictor:
        """The same rules, pods table and source (and its cache) over another bundle (a reload)."""
        return Predictor(bundle, self.catalog, self.pods, self.source)

    def _recent(self, sid: str, given: list, now: object = None) -> list:
        """The observations a request sent; when it sent none (nor a ``now``) and a Prometheus
        source is configured, the series' recent window from it."""
        if given or now is not None or self.source is None:
            return [(o.ts, o.value) for o in given]
        return self.source.recent(sid, lambda metric, labels: self._series_of_labels(metric, labels)[0])

    def fetches(self, req: PredictRequest) -> bool:
        """Whether answering ``req`` asks the Prometheus source for the recent window (I/O)."""
        return self.source is not None and not req.recent and req.now is None

    @property
    def model_version(self) -> str:
        return self.bundle.version_label

    # --- which series answers -------------------------------------------------------------
    def locate(self, series_id: str | None, metric: str | None, labels: dict[str, str]) -> tuple[str, str]:
        """The bundle's series for a request, and how it was found (for the answer)."""
        if series_id:
            sid, how = series_id, "series_id given"
        else:
            sid, how = self._series_of_labels(metric or "", labels)
        if sid not in self.bundle.forecasters:
            known = ", ".join(sorted(self.bundle.forecasters)[:20])
            raise UnknownSeries(f"no model for series {shortened(repr(sid))} ({shortened(how)}); "
                                f"known series: {shortened(known, 300)}")
        return sid, how

    def _series_of_labels(self, metric: str, labels: dict[str, str]) -> tuple[str, str]:
        spec = s.spec_for(metric)
        node_level = spec.level == "node"
        for key in ("node", "host") if node_level else ("service", "workload"):
            if labels.get(key):
                return s.series_id(labels[key], metric), f"{key} label"
        pod = labels.get("pod")
        if pod:
            record = self.pods.lookup(pod) if self.pods is not None else None
            target = (record.node if node_level else record.workload) if record else None
            if target:
                kind = "node" if node_level else "workload"
                return (s.series_id(target, metric),
                        f"pod {shortened(repr(pod), 60)} -> {kind} {target!r} (pods.parquet)")
            workload = None if node_level else workload_of_pod(pod)
            if workload:
                seen = "not in pods.parquet; " if self.pods is not None else ""
                return (s.series_id(workload, metric),
                        f"pod {shortened(repr(pod), 60)} -> workload {workload!r} ({seen}pod name pattern)")
        for key in ("service", "workload") if node_level else ("node", "host"):
            if labels.get(key):
                return s.series_id(labels[key], metric), f"{key} label"
        raise UnknownSeries(
            f"cannot locate a series for metric {shortened(repr(metric))} with labels "
            f"{shortened(labels)}: give 'service', a pod name of a known shape (or one in the "
            "feature job's pods.parquet), or 'node'")

    # --- one series -------------------------------------------------------------------------
    def resolve(self, req: PredictRequest) -> tuple[Query, str, str | None]:
        """What ``req`` asks of the bundle (series, threshold, direction, horizon, observations),
        how its series was found, and the rule it named; raises as /predict answers."""
        return self._resolve(req.series_id, req.metric, req.labels, req.rule, req.threshold, req.direction,
                             req.horizon_minutes, "horizon_minutes" in req.model_fields_set,
                             req.now, req.context, given=req.recent)

    def _resolve(self, series_id: str | None, metric_asked: str | None, labels: dict[str, str],
                 rule_asked: str | None, threshold: float | None, direction: str | None, horizon: float,
                 horizon_given: bool, now: datetime | None, context: dict[str, float],
                 given: list | None = None, observed: tuple | None = None) -> tuple[Query, str, str | None]:
        """:meth:`resolve` of a request's fields; the observations as ``given`` (``Observation``
        models) or ``observed`` (times in us since the epoch and values, as arrays)."""
        rule = None
        if rule_asked:
            if rule_asked not in self.catalog.rules:
                raise UnknownSeries(f"no rule {shortened(repr(rule_asked))} in the rules catalogue; known: "
                                    f"{shortened(', '.join(sorted(self.catalog.rules)), 300)}")
            rule = self.catalog.rules[rule_asked]
            if metric_asked and metric_asked != rule.metric:
                raise ValueError(
                    f"rule {rule_asked!r} watches {rule.metric}, not {shortened(repr(metric_asked))}")
        sid, how = self.locate(series_id, metric_asked or (rule.metric if rule else None), labels)
        entity, metric, spec, (lo, hi) = _series_facts(sid)
        if rule is not None:
            rule = self.catalog.rule(rule.name, entity)
            if metric != rule.metric:
                raise ValueError(f"rule {rule.name!r} watches {rule.metric}, not the series {sid!r}")
        if threshold is None:
            threshold = rule.threshold if rule else spec.threshold
        if math.isnan(threshold):  # unknown metric and no threshold given
            raise ValueError(f"metric of {shortened(repr(sid))} has no default threshold: send 'threshold'")
        if not lo <= threshold <= hi:
            unit = f" {spec.unit}" if spec.unit not in ("", "1", "ratio") else ""
            raise ValueError(f"threshold {threshold:g} is outside the values {metric} can take "
                             f"({lo:g} to {hi:g}{unit}): it can never be crossed; send one within that range")
        direction = direction or (rule.direction if rule else spec.direction)
        horizon = rule.horizon_minutes if rule and not horizon_given else horizon
        if observed is not None and (observed[0].size or now is not None or self.source is None):
            query = Query(sid, threshold, direction, horizon, None, now, context, observed)
        else:
            recent = self._recent(sid, given or [], now)
            query = Query(sid, threshold, direction, horizon, recent, now, context)
        return query, how, rule.name if rule else None

    def predict(self, req: PredictRequest) -> PredictResponse:
        """One series, by the batch's path (``predict_many``: the same answer as ``predict_series``,
        ~15 % less work, one forest walk for the anomaly score and its explanation)."""
        q, how, rule = self.resolve(req)
        (p,) = predict_many(self.bundle, [q])
        if isinstance(p, Exception):
            raise p
        return _response(p, how, rule)

    # --- many series ------------------------------------------------------------------------
    def predict_batch(self, req: PredictBatchRequest) -> PredictBatchResponse:
        """:meth:`predict_batch_json` of a request model, as a response model."""
        body = json.dumps({"items": req.items}).encode()
        return PredictBatchResponse.model_validate_json(self.predict_batch_json(body))

    def predict_batch_json(self, body: bytes) -> bytes:
        """A /predict_batch body answered, as the JSON of a ``PredictBatchResponse``.

        Each item answered or given its own error; one bad item never fails the batch. The
        items are read straight from the body in one pass (``BatchItem``); an item that fails
        it, or the checks the batch runs over all items at once (times in the plausible window,
        a series named), is validated alone as /predict validates its body, for the message it
        would get alone. The valid ones are answered together (``training.predict_many``),
        each as /predict would, and written as JSON without a model object per item.
        """
        # no young-generation collections while the batch allocates its ~30 objects an item (the
        # bundle is frozen out of the collector: they would find nothing); ~5 ms of a 1,000 batch
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._predict_batch_json(body)
        finally:
            if collecting:
                gc.enable()

    def _predict_batch_json(self, body: bytes) -> bytes:
        items, errors = _batch_items(body)
        _within_limit(len(items), "items")
        results: list = [None] * len(items)
        asked: list[tuple[int, Query, str, str | None]] = []
        for i, item in enumerate(items):
            try:
                if item is None:
                    raise errors[i]
                asked.append((i, *self._resolve(
                    item.get("series_id"), item.get("metric"), item.get("labels", _EMPTY),
                    item.get("rule"), item.get("threshold"), item.get("direction"),
                    item.get("horizon_minutes", 240), "horizon_minutes" in item, item.get("now"),
                    item.get("context", _EMPTY), observed=item["observed"])))
            except Exception as exc:
                results[i] = _item_failure_json(i, exc)
        # the series answered with array operations come as answer rows, written as they are
        answers = predict_many(self.bundle, [q for _, q, _, _ in asked], as_rows=True)
        version = self.model_version
        for (i, _, how, rule), p in zip(asked, answers, strict=True):
            try:
                if isinstance(p, dict):
                    p["resolved_by"], p["rule"] = how, rule
                    answer = p
                elif isinstance(p, Exception):
                    raise p
                else:
                    answer = _answer_json(p, how, rule)
                results[i] = {"index": i, "status": 200, "answer": answer, "error": None}
            except Exception as exc:
                results[i] = _item_failure_json(i, exc)
        failed = sum(r["status"] != 200 for r in results)
        return write_json({"model_version": version, "answered": len(results) - failed, "failed": failed,
                           "results": results})

    def alerts(self, req: AlertsRequest) -> AlertsResponse:
        """The series predicted to cross within their rules' lead times, most urgent first."""
        _within_limit(len(req.series), "series")
        wanted = req.rules if req.rules is not None else list(self.catalog.rules)
        unknown = [r for r in wanted if r not in self.catalog.rules]
        if unknown:
            raise ValueError(f"no rule(s) {shortened(unknown)} in the rules catalogue; known: "
                             f"{shortened(', '.join(sorted(self.catalog.rules)), 300)}")
        # every (series, rule) pair answered in one predict_many; a series that fails (locating
        # it, its rules, its observations or a rule's prediction) is skipped with its error, the
        # pairs before the failure counted and kept, as when each pair was predicted in turn
        asked: list[tuple[int, SeriesObservations, str, str, list[AlertingRule], Exception | None]] = []
        queries: list[Query] = []
        checked = 0
        for i, obs in enumerate(req.series):
            sid, how, rules, failure = "", "", [], None
            try:
                sid, how, rules = self.rules_of(obs, wanted)
                try:
                    recent = self._recent(sid, obs.recent)
                except Exception:
                    checked += 1  # its first rule was being checked when the source failed
                    raise
                queries += [Query(sid, rule.threshold, rule.direction, rule.horizon_minutes, recent,
                                  context=obs.context) for rule in rules]
            except Exception as exc:
                rules, failure = [], exc
            asked.append((i, obs, sid, how, rules, failure))
        answers = iter(predict_many(self.bundle, queries))
        alerts, skipped = [], []
        for i, obs, sid, how, rules, failure in asked:
            for rule, p in zip(rules, [next(answers) for _ in rules], strict=True):
                checked += 1
                try:
                    if isinstance(p, Exception):
                        raise p
                    hit = _crossing_within_lead(p, sid, how, rule)
                except Exception as exc:
                    failure = exc
                    break
                if hit is not None:
                    alerts.append(hit)
            if failure is not None:
                status, code, message = _item_error(failure, f"alerts series {i}")
                named = obs.series_id or f"{obs.metric} {obs.labels}"
                skipped.append(SkippedSeries(index=i, series=shortened(named),
                                             error={"code": code, "message": message}))
        alerts.sort(key=lambda a: (not a.already_crossed, a.minutes_to_threshold or 0.0, -a.probability,
                                   a.series_id, a.rule))
        return AlertsResponse(model_version=self.model_version, checked=checked, alerts=alerts,
                              skipped=skipped)

    def rules_of(self, obs: SeriesObservations, wanted: list[str]) -> tuple[str, str, list[AlertingRule]]:
        """The series an /alerts entry names, how it was found, and the ``wanted`` rules on its
        metric as they apply to its entity; raises when there is none."""
        sid, how = self.locate(obs.series_id, obs.metric, obs.labels)
        entity, metric = s.split_series_id(sid)
        rules = [self.catalog.rule(name, entity) for name in wanted
                 if self.catalog.rules[name].metric == metric]
        if not rules:
            raise UnknownSeries(f"no rule of the catalogue watches {metric!r}")
        return sid, how, rules

    # --- what is served ---------------------------------------------------------------------
    def series(self, metric: str | None = None, entity: str | None = None, kind: str | None = None,
               fallback: bool | None = None) -> SeriesList:
        """The bundle's series, filtered by any of metric, entity, model kind and fallback."""
        found = []
        for sid, model in sorted(self.bundle.forecasters.items()):
            ent, met = s.split_series_id(sid)
            is_fallback = model.kind_ != "prophet"
            if ((metric and met != metric) or (entity and ent != entity) or (kind and model.kind_ != kind)
                    or (fallback is not None and is_fallback != fallback)):
                continue
            found.append(SeriesInfo(
                series_id=sid, entity=ent, metric=met, model_kind=model.kind_, fallback=is_fallback,
                fallback_reason=getattr(model, "fallback_reason_", None),
                first_ts=getattr(model, "first_ts_", None), last_ts=getattr(model, "last_ts_", None),
                n_points=getattr(model, "n_points_", None),
                step_minutes=getattr(model, "step_minutes_", None)))
        window = self.bundle.manifest.get("training_window")
        return SeriesList(model_version=self.model_version, count=len(found), series=found,
                          training_window={k: str(v) for k, v in window.items()} if isinstance(window, dict)
                          else None)

    def rules(self) -> RulesList:
        out = []
        for name, rule in self.catalog.rules.items():
            overrides = {entity: {k: v for k, v in vars(changed).items() if getattr(rule, k) != v}
                         for entity, changed in self.catalog.overrides_of(name).items()}
            out.append(RuleInfo(**vars(rule), overrides=overrides))
        return RulesList(files=self.catalog.files, rules=out)


@lru_cache(maxsize=65536)
def _series_facts(sid: str) -> tuple:
    """A series id's entity, metric, metric spec and value range (the same for every request)."""
    entity, metric = s.split_series_id(sid)
    return entity, metric, s.spec_for(metric), s.value_range(metric)


def source_from_environment() -> PrometheusSource | None:
    """The Prometheus source of ``PREALERT_PROMETHEUS_URL``, None when unset (serving/source.py); a
    wrong configuration is a ``ModelLoadError`` (the service must not answer without it)."""
    from serving.source import PrometheusSource  # it reads watch rules, whose module imports this one

    try:
        return PrometheusSource.from_environment()
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"Prometheus source: {one_line(exc, 500)}") from exc


_BATCH = TypeAdapter(BatchItems)
_EMPTY: dict = {}  # never changed: a default shared by every item
_TS, _VALUE = itemgetter("ts"), itemgetter("value")
_NO_OBSERVATIONS = (np.zeros(0, dtype=np.int64), np.zeros(0))


class ItemInvalid(ValueError):
    """One batch item failed validation; ``errors`` are pydantic's, located within the item."""

    def __init__(self, errors: list[dict]):
        super().__init__(validation_message(errors))
        self.errors = errors


def _batch_items(body: bytes) -> tuple[list[dict | None], dict[int, ItemInvalid]]:
    """Every item of a /predict_batch body as a ``BatchItem`` dict whose ``observed`` holds its
    observations as arrays (times in us since the epoch, values), None where invalid, and each
    invalid item's error (the one ``PredictRequest`` gives it alone).

    A body that is not a batch at all raises ``ValueError`` with pydantic's message.
    """
    try:
        items = _BATCH.validate_json(body)["items"]
        doubtful: set[int] = set()
    except ValidationError as exc:
        try:
            raw = PredictBatchRequest.model_validate_json(body).items
        except ValidationError as outer:
            raise ValueError(validation_message(outer.errors())) from None
        doubtful = {err["loc"][1] for err in exc.errors() if len(err["loc"]) > 1}
        items = [None] * len(raw)
        good = [i for i in range(len(raw)) if i not in doubtful]
        for i, item in zip(good, _BATCH.validate_json(json.dumps({"items": [raw[i] for i in good]}))["items"],
                           strict=True):
            items[i] = item
    # the times of every item at once, read as the one-series path reads them (UTC)
    recents = [(item.get("recent") or ()) if item is not None else () for item in items]
    counts = list(map(len, recents))
    observations = [o for recent in recents for o in recent]
    times, values = list(map(_TS, observations)), list(map(_VALUE, observations))
    us, unread = _utc_us(times, counts)
    doubtful.update(unread)
    y = np.array(values, dtype=np.float64)
    late = np.flatnonzero(~plausible_seconds(us / 1e6))
    if late.size:
        doubtful.update(np.searchsorted(np.cumsum(counts), late, side="right").tolist())
    ends = np.cumsum(counts).tolist()
    for i, item in enumerate(items):
        if item is None or i in doubtful:
            continue
        now = item.get("now")
        if not (item.get("series_id") or item.get("metric") or item.get("rule")) or (
                now is not None and not plausible_seconds(
                    (now if now.tzinfo is not None else now.replace(tzinfo=UTC)).timestamp())):
            doubtful.add(i)
            continue
        lo, hi = ends[i] - counts[i], ends[i]
        item["observed"] = (us[lo:hi], y[lo:hi]) if hi > lo else _NO_OBSERVATIONS
    errors: dict[int, ItemInvalid] = {}
    if doubtful:  # each alone, as /predict validates it, for its own message
        raw = PredictBatchRequest.model_validate_json(body).items
        for i in sorted(doubtful):
            try:
                valid = PredictRequest.model_validate_json(json.dumps(raw[i]))
            except ValidationError as exc:
                errors[i] = ItemInvalid(exc.errors())
                items[i] = None
            else:  # valid after all (a time on the window's edge): answered as /predict reads it
                items[i] = _item_of(valid)
    return items, errors


def _utc_us(times: list[str], counts: list[int]) -> tuple[np.ndarray, list[int]]:
    """Microseconds since the epoch of a batch's observation times, in one numpy parse, and the
    items (of ``counts`` times each) with a time not of ``BATCH_TIME_PATTERN`` or one numpy cannot
    read (a day past the month's end): those items' times are read as 0 and the items validated alone."""
    n = len(times)
    if not n:
        return np.zeros(0, dtype=np.int64), []
    texts = np.array(times, dtype=f"U{BATCH_TIME_CHARS}")  # the schema holds times to this length
    codes = texts.view(np.uint32).reshape(n, BATCH_TIME_CHARS)
    length = np.fromiter(map(len, times), dtype=np.intp, count=n)
    ok, zulu = batch_time_form(codes, length)
    codes[np.flatnonzero(zulu), length[zulu] - 1] = 0  # the 'Z' dropped: numpy reads the rest as UTC
    unread: list[int] = []
    if not ok.all():
        texts[~ok] = "1970-01-01T00:00"
        unread = np.unique(np.searchsorted(np.cumsum(counts), np.flatnonzero(~ok), side="right")).tolist()
    try:
        us = texts.astype("datetime64[us]").view(np.int64)
    except ValueError:
        us, lo = np.zeros(n, dtype=np.int64), 0
        for i, k in enumerate(counts):
            try:
                us[lo:lo + k] = texts[lo:lo + k].astype("datetime64[us]").view(np.int64)
            except ValueError:
                unread.append(i)
            lo += k
        unread = sorted(set(unread))
    if unread:
        ends = np.cumsum(counts)
        for i in unread:
            us[ends[i] - counts[i]:ends[i]] = 0
    return us, unread


_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15])
_POSITIONS = np.arange(BATCH_TIME_CHARS)
#: the lengths of a ``BATCH_TIME_PATTERN`` text without its 'Z': minutes, seconds, 1-6 decimals
_CORE_LENGTHS = np.array([16, 19, 21, 22, 23, 24, 25, 26])


def batch_time_form(codes: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which texts match ``BATCH_TIME_PATTERN`` (``codes``: (n, BATCH_TIME_CHARS) code points, 0
    past each text's ``length``), and which of those end in its 'Z': the regex over arrays."""
    rows = np.arange(codes.shape[0])
    zulu = (length > 0) & (codes[rows, np.maximum(length - 1, 0)] == ord("Z"))
    core = length - zulu
    digit = (codes >= ord("0")) & (codes <= ord("9"))
    seconds, decimals = core >= 19, core >= 21
    wanted = np.zeros(codes.shape, dtype=bool)  # where a digit must stand
    wanted[:, _DIGITS] = True
    wanted[:, 17:19] = seconds[:, None]
    wanted |= decimals[:, None] & (_POSITIONS >= 20) & (core[:, None] > _POSITIONS)

    def two(at: int) -> np.ndarray:  # the two digits at ``at`` as a number
        return (codes[:, at].astype(np.int64) - ord("0")) * 10 + codes[:, at + 1].astype(np.int64) - ord("0")

    ok = (np.isin(core, _CORE_LENGTHS) & (digit | ~wanted).all(axis=1)
          & (codes[:, 4] == ord("-")) & (codes[:, 7] == ord("-")) & (codes[:, 10] == ord("T"))
          & (codes[:, 13] == ord(":")) & (~seconds | (codes[:, 16] == ord(":")))
          & (~decimals | (codes[:, 19] == ord("."))))
    month, day = two(5), two(8)
    ok &= ((month >= 1) & (month <= 12) & (day >= 1) & (day <= 31) & (two(11) <= 23) & (two(14) <= 59)
           & (~seconds | (two(17) <= 59)))
    return ok, zulu & ok


def _item_of(req: PredictRequest) -> dict:
    """A validated request as the batch's item dict."""
    item = {name: getattr(req, name) for name in req.model_fields_set}
    secs = np.array([(o.ts if o.ts.tzinfo is not None else o.ts.replace(tzinfo=UTC)).timestamp()
                     for o in req.recent], dtype=np.float64)
    item["observed"] = (np.round(secs * 1e6).astype(np.int64), np.array([o.value for o in req.recent],
                                                                         dtype=np.float64))
    return item


def write_json(doc: dict) -> bytes:
    """``doc`` (plain dicts, lists, str, int, float, bool, None, datetime) as JSON, byte for byte what
    pydantic writes for it with non-finite floats as null: orjson (a third of the time on a 1,000
    batch), pydantic when orjson takes a value it does not (a numpy scalar, an int beyond 64 bits,
    a datetime subclass); tests/serving compare the two on every kind of answer and error."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_UTC_Z)
    except TypeError:  # orjson.JSONEncodeError
        return pydantic_core.to_json(doc, inf_nan_mode="null")


def _float(value) -> float | None:
    return None if value is None else float(value)


def _answer_json(p: Prediction, how: str, rule: str | None) -> dict:
    """``_response(p, how, rule)`` as the plain dict its JSON is written from, without a model
    object: ``PredictResponse``'s fields in its order, its floats as floats (a test compares the
    bytes with the model's)."""
    return {
        "series_id": p.series_id, "model_version": p.model_version, "model_kind": p.model_kind,
        "now": p.now, "threshold": float(p.threshold), "direction": p.direction,
        "horizon_minutes": float(p.horizon_minutes),
        "minutes_to_threshold": _float(p.minutes_to_threshold), "crossing_at": p.crossing_at,
        "earliest_minutes": _float(p.earliest_minutes), "latest_minutes": _float(p.latest_minutes),
        "earliest_at": p.earliest_at, "latest_at": p.latest_at, "probability": float(p.probability),
        "already_crossed": bool(p.already_crossed), "alert": bool(p.alert),
        "alarm_probability": float(p.alarm_probability), "alert_rule": p.alert_rule,
        "keep_firing_minutes_left": _float(p.keep_firing_minutes_left), "calibrated": bool(p.calibrated),
        "calibration_note": p.calibration_note, "calendar": p.calendar, "driver": p.driver,
        "drivers": [{"component": d["component"], "meaning": d["meaning"], "change": float(d["change"])}
                    for d in p.drivers],
        "level_correction": float(p.level_correction),
        "trend_correction_per_min": float(p.trend_correction_per_min),
        "anomaly_score": _float(p.anomaly_score),
        "anomaly_top_metrics": [{"metric": m["metric"], "z": float(m["z"])} for m in p.anomaly_top_metrics],
        "message": p.sentence(), "resolved_by": how, "rule": rule,
    }


def _item_failure_json(i: int, exc: Exception) -> dict:
    status, code, message = _item_error(exc, f"batch item {i}")
    return {"index": i, "status": status, "answer": None, "error": {"code": code, "message": message}}


def _crossing_within_lead(p: Prediction, sid: str, how: str, rule: AlertingRule) -> PredictedAlert | None:
    """The alert a rule's prediction raises: already crossed, or a likely crossing within its lead time."""
    soon = (p.minutes_to_threshold is not None and p.minutes_to_threshold <= rule.lead_minutes
            and p.probability >= p.alarm_probability)
    if not (p.already_crossed or soon):
        return None
    return PredictedAlert(
        rule=rule.name, severity=rule.severity, series_id=sid, threshold=rule.threshold,
        direction=rule.direction, lead_minutes=rule.lead_minutes, horizon_minutes=rule.horizon_minutes,
        minutes_to_threshold=0.0 if p.already_crossed else p.minutes_to_threshold,
        earliest_minutes=p.earliest_minutes, latest_minutes=p.latest_minutes, crossing_at=p.crossing_at,
        probability=p.probability, already_crossed=p.already_crossed, alert=p.alert,
        message=p.sentence(), resolved_by=how)


def _response(p: Prediction, how: str, rule: str | None) -> PredictResponse:
    # the answer's fields as they are (``as_dict`` deep-copies them: 0.3 ms a request); validating
    # them (in pydantic's core) costs less than ``model_construct`` (a Python loop over the fields)
    return PredictResponse(**{f: getattr(p, f) for f in PREDICTION_FIELDS}, message=p.sentence(),
                           resolved_by=how, rule=rule)


def _within_limit(n: int, what: str) -> None:
    limit = max_batch()
    if n > limit:
        raise BatchTooLarge(f"{n} {what} is more than this server takes in one request ({limit}, "
                            f"its {MAX_BATCH_ENV}); split the request")


def _item_error(exc: Exception, where: str) -> tuple[int, str, str]:
    """Status, code and message of one item's failure (an unexpected one is logged, not shown)."""
    if isinstance(exc, SourceUnavailable):
        return 503, "source_unavailable", shortened(str(exc), 1000)
    if isinstance(exc, ValidationError):
        return 400, "bad_request", shortened(validation_message(exc.errors()), 1000)
    if isinstance(exc, ItemInvalid):
        return 400, "bad_request", shortened(str(exc), 1000)
    if isinstance(exc, UnknownSeries | KeyError):
        return 404, "not_found", shortened(exc.args[0] if exc.args else str(exc), 1000)
    if isinstance(exc, ValueError):
        return 400, "bad_request", shortened(str(exc), 1000)
    logger.error("unexpected error on %s", where, exc_info=exc)
    return 500, "internal_error", UNEXPECTED_ITEM


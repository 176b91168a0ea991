"""Live mode: pull recent series from Prometheus on an interval, predict, expose them on /metrics."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric

from features import schema as s
from features.prometheus import PrometheusError, query_range
from serving.alertmanager import AlertmanagerError, AlertPusher, alert_annotations, alert_labels
from serving.predictor import Predictor, UnknownSeries
from serving.rules import Catalog, load_catalog
from serving.schemas import PredictRequest, PredictResponse

#: every reason a series gets no answer (or an alert is not delivered), pre-set to 0 on /metrics
ERROR_REASONS = ("query_failed", "no_entity_label", "too_few_points", "unknown_series",
                 "prediction_failed", "alertmanager_failed")
#: exposition labels prealert sets itself; a series label of the same name becomes exported_<name>
OWN_LABELS = ("rule", "series_id", "quantile")
ENTITY_KINDS = ("service", "pod", "node")


@dataclass(frozen=True)
class Rule:
    """One watched query: which prealert series its results are and the threshold to predict."""

    name: str
    query: str  # PromQL; each result series is one prediction
    metric: str  # prealert metric name the model knows, e.g. jvm_heap_pct
    threshold: float | None  # None: the catalogue rule's, as set for the series' entity
    direction: str | None = "above"
    horizon_minutes: float | None = 240.0
    entity_label: str = "service"  # the result label whose value is the entity (workload/node/pod)
    entity_kind: str = "service"  # what that value is for prealert: service, pod or node
    severity: str = "warning"  # label of the alert pushed to Alertmanager
    rule: str | None = None  # a rules-catalogue rule giving metric, threshold, direction, horizon


def _from_catalog(item: dict, where: str, catalog: Catalog) -> Rule:
    """A watch rule naming a catalogue rule: what it leaves out, the catalogue (and the operator's
    overrides per entity) decides, through the predictor, for each series."""
    name = item["rule"]
    if name not in catalog.rules:
        raise ValueError(f"{where}: rule {name!r} is not in the rules catalogue; known: "
                         f"{', '.join(sorted(catalog.rules))}")
    base = catalog.rules[name]
    if item.get("metric", base.metric) != base.metric:
        raise ValueError(f"{where}: metric {item['metric']!r} is not the one rule {name!r} watches "
                         f"({base.metric})")
    checked = _rule({**item, "metric": base.metric, "threshold": item.get("threshold", base.threshold),
                     "direction": item.get("direction", base.direction),
                     "horizon_minutes": item.get("horizon_minutes", base.horizon_minutes)}, where, None)
    return Rule(name=checked.name, query=checked.query, metric=base.metric, rule=name,
                threshold=checked.threshold if "threshold" in item else None,
                direction=checked.direction if "direction" in item else None,
                horizon_minutes=checked.horizon_minutes if "horizon_minutes" in item else None,
                entity_label=checked.entity_label, entity_kind=checked.entity_kind, severity=checked.severity)


def _rule(item: Any, where: str, catalog: Catalog | None) -> Rule:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: a rule is a mapping with name, query, metric, ..., got {item!r}")
    known = {f.name for f in fields(Rule)}
    unknown = sorted(set(item) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    missing = [k for k in ("name", "query") + (() if item.get("rule") else ("metric",)) if not item.get(k)]
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    where = f"{where} ({item['name']!r})"
    if item.get("rule") and catalog is not None:
        return _from_catalog(item, where, catalog)
    spec = s.spec_for(str(item["metric"]))
    label = str(item.get("entity_label", "service"))
    raw = {
        "threshold": item.get("threshold", spec.threshold),
        "direction": item.get("direction", spec.direction),
        "horizon_minutes": item.get("horizon_minutes", 240.0),
    }
    try:
        threshold, horizon = float(raw["threshold"]), float(raw["horizon_minutes"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: threshold and horizon_minutes must be numbers, got "
                         f"{raw['threshold']!r} and {raw['horizon_minutes']!r}") from None
    if not math.isfinite(threshold):
        raise ValueError(f"{where}: give a threshold (metric {item['metric']!r} has no default)")
    if not 0 < horizon <= 24 * 60:
        raise ValueError(f"{where}: horizon_minutes must be in (0, 1440], got {horizon:g}")
    if raw["direction"] not in ("above", "below"):
        raise ValueError(f"{where}: direction must be 'above' or 'below', got {raw['direction']!r}")
    kind = str(item.get("entity_kind", label if label in ENTITY_KINDS else "service"))
    if kind not in ENTITY_KINDS:
        raise ValueError(f"{where}: entity_kind must be one of {list(ENTITY_KINDS)}, got {kind!r}")
    return Rule(name=str(item["name"]), query=str(item["query"]), metric=str(item["metric"]),
                threshold=threshold, direction=raw["direction"], horizon_minutes=horizon,
                entity_label=label, entity_kind=kind, severity=str(item.get("severity", "warning")))


def load_rules(path: str | Path) -> list[Rule]:
    """The rules of a YAML file (``rules:`` list); one ``ValueError`` naming the file and the rule."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the rules file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    items = doc.get("rules") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a top-level 'rules:' list with at least one rule")
    catalog = load_catalog() if any(isinstance(i, dict) and i.get("rule") for i in items) else None
    rules = [_rule(item, f"{path}: rule {i + 1}", catalog) for i, item in enumerate(items)]
    names = Tally(r.name for r in rules)
    dup = sorted(n for n, c in names.items() if c > 1)
    if dup:
        raise ValueError(f"{path}: rule names must be unique, repeated: {dup}")
    return rules


@dataclass
class Answer:
    """One series' prediction as exposed: its exposition labels and the service's response."""

    labels: dict[str, str]
    series_labels: dict[str, str]
    rule: Rule
    response: PredictResponse


def exposition_labels(series_labels: dict[str, str], rule: str, series_id: str) -> dict[str, str]:
    """The series' labels (no ``__name__``) plus ``rule`` and ``series_id``."""
    out = {}
    for k, v in series_labels.items():
        if k != "__name__":
            out[f"exported_{k}" if k in OWN_LABELS else k] = v
    return {**out, "rule": rule, "series_id": series_id}


def _inf(v: float | None) -> float:
    return math.inf if v is None else float(v)


class PredictionCollector:
    """Serves the latest cycle's answers; a series missing from the last cycle disappears."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []

    def collect(self) -> Iterable[Metric]:
        answers = self.answers  # one cycle's list, replaced whole by the next cycle
        minutes = Metric("prealert_minutes_to_threshold",
                         "Minutes until the series reaches the rule's threshold: quantile 0.5 the "
                         "median crossing time, 0.1/0.9 its P10/P90; +Inf when not within the "
                         "horizon; 0 when already crossed.", "gauge")
        prob = Metric("prealert_crossing_probability",
                      "Probability of reaching the threshold within the rule's horizon.", "gauge")
        alert = Metric("prealert_alert", "1 when prealert's alert rule says warn now.", "gauge")
        score = Metric("prealert_anomaly_score",
                       "0-1 anomaly score of the series' entity now (share of training minutes "
                       "that looked less anomalous).", "gauge")
        threshold = Metric("prealert_threshold", "The rule's threshold, in the metric's unit.", "gauge")
        for a in answers:
            r = a.response
            for q, v in (("0.1", r.earliest_minutes), ("0.5", r.minutes_to_threshold),
                         ("0.9", r.latest_minutes)):
                if r.already_crossed:
                    v = 0.0
                minutes.add_sample(minutes.name, {**a.labels, "quantile": q}, _inf(v))
            prob.add_sample(prob.name, a.labels, float(r.probability))
            alert.add_sample(alert.name, a.labels, 1.0 if r.alert else 0.0)
            threshold.add_sample(threshold.name, a.labels, float(r.threshold))
            if r.anomaly_score is not None:
                score.add_sample(score.name, a.labels, float(r.anomaly_score))
        yield from (minutes, prob, alert, score, threshold)


@dataclass
class CycleReport:
    answered: int = 0
    alerting: int = 0
    pushed: int = 0
    errors: Tally = field(default_factory=Tally)
    examples: dict[str, str] = field(default_factory=dict)  # first message per error reason
    seconds: float = 0.0

    def summary(self) -> str:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        return (f"{self.answered} series answered, {self.alerting} alerting, {self.pushed} pushed "
                f"to Alertmanager; errors: {errs} ({self.seconds:.1f} s)")


class Watcher:
    """The live loop's state: rules, predictor, metrics registry and the Alertmanager pusher."""

    def __init__(self, predictor: Predictor, rules: list[Rule], prometheus_url: str, *,
                 window: timedelta = timedelta(minutes=90), step: timedelta = timedelta(seconds=60),
                 min_points: int = 3, pusher: AlertPusher | None = None, timeout: float = 30.0,
                 echo: Callable[[str], None] = print) -> None:
        self.predictor, self.rules, self.prometheus_url = predictor, rules, prometheus_url
        self.window, self.step, self.min_points, self.timeout = window, step, min_points, timeout
        self.pusher, self.echo = pusher, echo
        self.registry = CollectorRegistry()
        self.collector = PredictionCollector()
        self.registry.register(self.collector)
        self.errors = Counter("prealert_watch_errors", "Series left without an answer (or alerts "
                              "not delivered) by reason.", ["reason"], registry=self.registry)
        for reason in ERROR_REASONS:
            self.errors.labels(reason)
        self.cycles = Counter("prealert_watch_cycles", "Watch cycles run.", registry=self.registry)
        self.pushed = Counter("prealert_watch_alerts_pushed", "Alerts posted to Alertmanager "
                              "(first sends and refreshes).", registry=self.registry)
        self.last_cycle = Gauge("prealert_watch_last_cycle_timestamp_seconds",
                                "When the last cycle ended (Unix time).", registry=self.registry)
        self.cycle_seconds = Gauge("prealert_watch_cycle_duration_seconds",
                                   "How long the last cycle took.", registry=self.registry)
        Gauge("prealert_model_info", "The model bundle answering (value 1).", ["model_version"],
              registry=self.registry).labels(predictor.model_version).set(1)

    def _fail(self, report: CycleReport, reason: str, message: str) -> None:
        report.errors[reason] += 1
        report.examples.setdefault(reason, message)
        self.errors.labels(reason).inc()

    def _answer(self, rule: Rule, labels: dict[str, str], samples: list[tuple[float, str]],
                report: CycleReport) -> Answer | None:
        recent = [(datetime.fromtimestamp(t, UTC), float(v)) for t, v in samples]
        recent = [(t, v) for t, v in recent if math.isfinite(v)]
        entity = labels.get(rule.entity_label)
        if not entity:
            self._fail(report, "no_entity_label", f"rule {rule.name}: series {labels} has no "
                       f"{rule.entity_label!r} label")
            return None
        if len(recent) < self.min_points:
            self._fail(report, "too_few_points", f"rule {rule.name}: {entity} has {len(recent)} "
                       f"finite points in the window, fewer than {self.min_points}")
            return None
        try:
            req = PredictRequest(metric=rule.metric, labels={rule.entity_kind: entity}, rule=rule.rule,
                                 threshold=rule.threshold, direction=rule.direction,
                                 **({} if rule.horizon_minutes is None else
                                    {"horizon_minutes": rule.horizon_minutes}),
                                 recent=[{"ts": t, "value": v} for t, v in recent[-10_000:]])
            response = self.predictor.predict(req)
        except UnknownSeries as exc:
            self._fail(report, "unknown_series", f"rule {rule.name}: {exc}")
            return None
        except Exception as exc:  # one bad series never stops the cycle
            self._fail(report, "prediction_failed", f"rule {rule.name}: {entity}: "
                       f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            return None
        return Answer(exposition_labels(labels, rule.name, response.series_id), labels, rule, response)

    def run_cycle(self, now: datetime | None = None) -> CycleReport:
        """Pull every rule's window, answer each series, publish, push due alerts."""
        started = time.monotonic()
        now = now or datetime.now(UTC)
        report, answers = CycleReport(), []
        with httpx.Client(timeout=self.timeout) as client:
            for rule in self.rules:
                try:
                    result = query_range(self.prometheus_url, rule.query, now - self.window, now,
                                         self.step, client=client, timeout=self.timeout)
                except PrometheusError as exc:
                    self._fail(report, "query_failed", f"rule {rule.name}: {exc}")
                    continue
                for key, samples in result.series.items():
                    answer = self._answer(rule, dict(key), samples, report)
                    if answer is not None:
                        answers.append(answer)
            self.collector.answers = answers
            report.answered = len(answers)
            firing = [a for a in answers if a.response.alert]
            report.alerting = len(firing)
            if self.pusher is not None:
                alerts = [(alert_labels(a.labels, a.rule.name, a.rule.severity),
                           alert_annotations(a.response)) for a in firing]
                try:
                    report.pushed = self.pusher.push(alerts, now, client=client)
                    self.pushed.inc(report.pushed)
                except AlertmanagerError as exc:
                    self._fail(report, "alertmanager_failed", str(exc))
        report.seconds = time.monotonic() - started
        self.cycles.inc()
        self.last_cycle.set(time.time())
        self.cycle_seconds.set(report.seconds)
        return report

    def run(self, interval: float, stop: threading.Event, cycles: int = 0) -> None:
        """Cycle every ``interval`` seconds until ``stop`` is set (or after ``cycles`` if > 0)."""
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            report = self.run_cycle()
            n += 1
            self.echo(f"cycle {n}: {report.summary()}")
            for reason, message in sorted(report.examples.items()):
                self.echo(f"  {reason}: {message}")
            if cycles and n >= cycles:
                return
            stop.wait(max(0.0, interval - (time.monotonic() - started)))


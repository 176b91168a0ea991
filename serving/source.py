"""Pull, not push: the recent window of a series fetched from Prometheus when a request sends none.

Configured from the environment: ``PREALERT_PROMETHEUS_URL`` (the Prometheus to ask) and
``PREALERT_PROMETHEUS_RULES`` (a ``prealert watch`` rules file: each rule's PromQL ``query`` and
``entity_label`` say which result series is which prealert series). One range query per rule
query and cycle: its result, every series of the query, is cached for
``PREALERT_PROMETHEUS_TTL_SECONDS`` (30) and answers every request for those series meanwhile.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from features import schema as s
from features.prometheus import PrometheusError, parse_duration, query_range
from serving.predictor import SourceUnavailable, UnknownSeries
from serving.schemas import shortened
from serving.watch import Rule, load_rules

URL_ENV = "PREALERT_PROMETHEUS_URL"
RULES_ENV = "PREALERT_PROMETHEUS_RULES"
TTL_ENV = "PREALERT_PROMETHEUS_TTL_SECONDS"
WINDOW_ENV = "PREALERT_PROMETHEUS_WINDOW"
STEP_ENV = "PREALERT_PROMETHEUS_STEP"
DEFAULT_TTL_SECONDS = 30.0
DEFAULT_WINDOW = timedelta(minutes=90)  # what the alert rule's checks need (README: serve)
DEFAULT_STEP = timedelta(seconds=60)

logger = logging.getLogger("prealert.source")

#: (metric, labels) -> series id, as the predictor resolves a request's labels
Resolve = Callable[[str, dict[str, str]], str]
Samples = list[tuple[datetime, float]]


@dataclass
class _Fetched:
    at: float  # monotonic time of the fetch
    start: datetime
    end: datetime
    series: list[tuple[dict[str, str], Samples]]  # every result series: labels, finite samples


class PrometheusSource:
    """The recent window of a series from Prometheus, one range query per rule query per TTL."""

    def __init__(self, url: str, rules: list[Rule], *, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 window: timedelta = DEFAULT_WINDOW, step: timedelta = DEFAULT_STEP,
                 timeout: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not rules:
            raise ValueError("a Prometheus source needs at least one rule")
        self.url, self.rules, self.ttl = url, rules, ttl_seconds
        self.window, self.step, self.timeout, self.clock = window, step, timeout, clock
        self.range_queries = 0  # /api/v1/query_range requests made (the cache's misses)
        self.cache_hits = 0
        self._cache: dict[str, _Fetched] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @classmethod
    def from_environment(cls) -> PrometheusSource | None:
        """The source the environment configures, or None when ``PREALERT_PROMETHEUS_URL`` is unset;
        a ``ValueError`` naming the variable when the configuration is incomplete or wrong."""
        url = os.environ.get(URL_ENV, "").strip()
        if not url:
            return None
        path = os.environ.get(RULES_ENV, "").strip()
        if not path:
            raise ValueError(f"{URL_ENV} is set but {RULES_ENV} is not: give a watch rules file "
                             "(deploy/prometheus/watch-rules.yml) saying which query gives which series")
        raw_ttl = os.environ.get(TTL_ENV, "").strip()
        try:
            ttl = float(raw_ttl) if raw_ttl else DEFAULT_TTL_SECONDS
        except ValueError:
            ttl = -1.0
        if not 0 <= ttl < math.inf:
            raise ValueError(f"{TTL_ENV}={shortened(raw_ttl, 40)!r} is not a number of seconds >= 0")
        window = parse_duration(os.environ.get(WINDOW_ENV) or DEFAULT_WINDOW.total_seconds(), WINDOW_ENV)
        step = parse_duration(os.environ.get(STEP_ENV) or DEFAULT_STEP.total_seconds(), STEP_ENV)
        return cls(url, load_rules(path), ttl_seconds=ttl, window=window, step=step)

    def stats(self) -> dict:
        """What /status shows of the source."""
        return {"url": self.url, "rules": [r.name for r in self.rules], "ttl_seconds": self.ttl,
                "window_seconds": self.window.total_seconds(), "step_seconds": self.step.total_seconds(),
                "range_queries": self.range_queries, "cache_hits": self.cache_hits}

    # --- one query, cached ---------------------------------------------------------------------
    def fetch(self, query: str) -> _Fetched:
        """Every series of ``query`` over the last window: from the cache while it is younger than
        the TTL, else from one range query (concurrent requests for it wait for that one)."""
        with self._guard:
            lock = self._locks.setdefault(query, threading.Lock())
        with lock:
            cached = self._cache.get(query)
            if cached is not None and self.clock() - cached.at < self.ttl:
                with self._guard:
                    self.cache_hits += 1
                return cached
            end = datetime.now(UTC)
            start = end - self.window
            with self._guard:
                self.range_queries += 1
            try:
                result = query_range(self.url, query, start, end, self.step, timeout=self.timeout)
            except PrometheusError as exc:  # never cached: the next request asks again
                raise SourceUnavailable(f"no 'recent' sent and the Prometheus source cannot give it: "
                                        f"{exc}") from exc
            fetched = _Fetched(self.clock(), start, end, [
                (dict(key), samples_of(values)) for key, values in result.series.items()])
            self._cache[query] = fetched
            return fetched

    # --- one series ------------------------------------------------------------------------------
    def recent(self, sid: str, resolve: Resolve) -> Samples:
        """The series' recent observations from the first rule on its metric whose query returns it;
        ``UnknownSeries`` (404) when no rule watches the metric or no query returns the series,
        ``SourceUnavailable`` (503) when Prometheus cannot be asked."""
        _, metric = s.split_series_id(sid)
        rules = [r for r in self.rules if r.metric == metric]
        if not rules:
            raise UnknownSeries(
                f"no 'recent' sent and no rule of the Prometheus source ({RULES_ENV}) watches metric "
                f"{shortened(repr(metric))}; its rules watch {sorted({r.metric for r in self.rules})}")
        seen: list[str] = []
        for rule in rules:
            fetched = self.fetch(rule.query)
            for labels, samples in fetched.series:
                found = series_of(rule, labels, resolve)
                if found == sid:
                    return samples
                if found:
                    seen.append(found)
        names = ", ".join(repr(r.name) for r in rules)
        returned = (f"it returned {shortened(', '.join(sorted(set(seen))), 200)}" if seen
                    else "it returned none")
        raise UnknownSeries(f"no 'recent' sent and Prometheus returned no series {shortened(repr(sid))} "
                            f"for the query of rule(s) {names} ({returned})")


def samples_of(values: list[tuple[float, str]]) -> Samples:
    """Prometheus samples as (UTC time, value), the non-finite ones left out."""
    out = []
    for t, v in values:
        value = float(v)
        if math.isfinite(value):
            out.append((datetime.fromtimestamp(t, UTC), value))
    return out


def series_of(rule: Rule, labels: dict[str, str], resolve: Resolve) -> str | None:
    """The prealert series a result series of ``rule`` is (as ``prealert watch`` maps it), or None
    when it has no entity label or its labels locate nothing."""
    entity = labels.get(rule.entity_label)
    if not entity:
        return None
    try:
        return resolve(rule.metric, {rule.entity_kind: entity})
    except (UnknownSeries, ValueError):
        return None

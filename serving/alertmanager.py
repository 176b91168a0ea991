"""Predictive alerts pushed to Alertmanager's v2 API, deduplicated across watch cycles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

ALERTNAME = "PrealertPredictedCrossing"


class AlertmanagerError(RuntimeError):
    """Alertmanager could not be reached or refused the alerts; the message is one line."""


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _minutes(v: float | None) -> str:
    return "none within the horizon" if v is None else f"{v:.0f}"


def alert_labels(series_labels: Mapping[str, str], rule: str, severity: str) -> dict[str, str]:
    """The alert's identity: the series' labels plus alertname, rule and severity."""
    labels = {k: v for k, v in series_labels.items() if k != "__name__"}
    return {**labels, "alertname": ALERTNAME, "rule": rule, "severity": severity}


def alert_annotations(answer) -> dict[str, str]:
    """What an operator reads: the sentence, minutes with their P10-P90 interval, the odds, the model.

    ``answer`` is a ``serving.schemas.PredictResponse`` (or anything with its fields).
    """
    return {
        "summary": answer.message,
        "message": answer.message,
        "minutes_to_threshold": _minutes(answer.minutes_to_threshold),
        "interval": f"{_minutes(answer.earliest_minutes)} to {_minutes(answer.latest_minutes)} min (P10-P90)",
        "probability": f"{answer.probability:.2f}",
        "threshold": f"{answer.threshold:g} ({answer.direction})",
        "horizon_minutes": f"{answer.horizon_minutes:g}",
        "alert_rule": answer.alert_rule,
        "model_version": answer.model_version,
        "series_id": answer.series_id,
    }


@dataclass
class _Sent:
    starts_at: datetime
    ends_at: datetime


@dataclass
class AlertPusher:
    """Posts firing predictions to ``POST /api/v2/alerts``; each alert once, then only to refresh.

    An alert is identified by its labels. It is sent when it starts firing with ``endsAt`` =
    now + ``ends_after``, and re-sent (same ``startsAt``) only once ``endsAt`` is less than
    ``refresh_before`` away -- never because its annotations changed. An alert no longer given
    is not re-sent, so Alertmanager resolves it at its ``endsAt``.
    """

    url: str
    ends_after: timedelta
    refresh_before: timedelta
    generator_url: str | None = None
    timeout: float = 10.0
    sent: dict[tuple, _Sent] = field(default_factory=dict)
    pushes: int = 0  # alerts posted (first sends and refreshes)

    def due(self, alerts: list[tuple[dict[str, str], dict[str, str]]], now: datetime) -> list[dict]:
        """The postable alerts among ``(labels, annotations)`` that are new or need a refresh."""
        current = {tuple(sorted(labels.items())) for labels, _ in alerts}
        for key in [k for k, v in self.sent.items() if k not in current or v.ends_at <= now]:
            del self.sent[key]  # stopped firing, or already expired: a return starts a new alert
        out = []
        for labels, notes in alerts:
            key = tuple(sorted(labels.items()))
            prev = self.sent.get(key)
            if prev is not None and prev.ends_at - now > self.refresh_before:
                continue
            starts = prev.starts_at if prev else now
            body = {"labels": labels, "annotations": notes, "startsAt": _iso(starts),
                    "endsAt": _iso(now + self.ends_after)}
            if self.generator_url:
                body["generatorURL"] = self.generator_url
            out.append((key, starts, body))
        return out

    def push(self, alerts: list[tuple[dict[str, str], dict[str, str]]], now: datetime | None = None,
             client: httpx.Client | None = None) -> int:
        """Send what is due; returns how many alerts were posted. Raises ``AlertmanagerError``
        (nothing is recorded as sent, so the next cycle retries)."""
        now = now or datetime.now(UTC)
        due = self.due(alerts, now)
        if not due:
            return 0
        endpoint = self.url.rstrip("/") + "/api/v2/alerts"
        try:
            if client is None:
                response = httpx.post(endpoint, json=[b for *_, b in due], timeout=self.timeout)
            else:
                response = client.post(endpoint, json=[b for *_, b in due])
        except httpx.HTTPError as exc:
            raise AlertmanagerError(f"cannot reach Alertmanager at {self.url}: "
                                    f"{' '.join(str(exc).split())}") from exc
        if response.status_code != 200:
            raise AlertmanagerError(f"Alertmanager at {endpoint} answered HTTP {response.status_code}: "
                                    f"{' '.join(response.text.split())[:200]!r}")
        for key, starts, _ in due:
            self.sent[key] = _Sent(starts, now + self.ends_after)
        self.pushes += len(due)
        return len(due)

"""The rules catalogue: per alarm target a metric, threshold, direction, lead time and horizon, with
operators' overrides per rule and per workload/service/node."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from features import schema as s

CATALOG_PATH = Path(__file__).with_name("rules_catalog.yaml")
RULES_ENV = "PREALERT_RULES"
#: the longest horizon a request may ask for (PredictRequest's bound), in minutes
MAX_HORIZON = 24 * 60
SETTINGS = ("threshold", "direction", "lead_minutes", "horizon_minutes", "severity")
RULE_KEYS = ("name", "metric", *SETTINGS)
OVERRIDE_KEYS = ("rule", "entity", *SETTINGS)


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the file, the rule and the field."""


@dataclass(frozen=True)
class AlertingRule:
    """One alarm target, resolved: every field set (defaults from the metric catalogue)."""

    name: str
    metric: str
    threshold: float
    direction: str
    lead_minutes: float
    horizon_minutes: float
    severity: str = "warning"


@dataclass
class Catalog:
    """Rules by name, and per-entity overrides by (rule, entity); ``files`` it was read from."""

    rules: dict[str, AlertingRule]
    overrides: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def rule(self, name: str, entity: str | None = None) -> AlertingRule:
        """The rule ``name`` as it applies to ``entity`` (its override, if any, applied)."""
        if name not in self.rules:
            raise KeyError(f"no rule {name!r} in the rules catalogue; known: {', '.join(sorted(self.rules))}")
        rule = self.rules[name]
        changes = self.overrides.get((name, entity or ""))
        return replace(rule, **changes) if changes else rule

    def for_metric(self, metric: str) -> list[str]:
        """Names of the rules watching ``metric``."""
        return [name for name, r in self.rules.items() if r.metric == metric]

    def overrides_of(self, name: str) -> dict[str, AlertingRule]:
        """The rule ``name`` as overridden, by entity."""
        return {entity: self.rule(name, entity) for (rule, entity) in self.overrides if rule == name}


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RulesError(f"{where}: {key}: must be a finite number, got {value!r}")
    return float(value)


def _settings(item: dict, where: str) -> dict[str, Any]:
    """The settings an item gives, each checked on its own."""
    out: dict[str, Any] = {}
    if "threshold" in item:
        out["threshold"] = _number(item["threshold"], where, "threshold")
    if "direction" in item:
        if item["direction"] not in ("above", "below"):
            raise RulesError(f"{where}: direction: must be 'above' or 'below', got {item['direction']!r}")
        out["direction"] = item["direction"]
    for key in ("lead_minutes", "horizon_minutes"):
        if key in item:
            minutes = _number(item[key], where, key)
            if not 0 < minutes <= MAX_HORIZON:
                raise RulesError(f"{where}: {key}: must be in (0, {MAX_HORIZON}] minutes, got {minutes:g}")
            out[key] = minutes
    if "severity" in item:
        if not isinstance(item["severity"], str) or not item["severity"]:
            raise RulesError(f"{where}: severity: must be a non-empty string, got {item['severity']!r}")
        out["severity"] = item["severity"]
    return out


def _checked(rule: AlertingRule, where: str) -> AlertingRule:
    if rule.lead_minutes > rule.horizon_minutes:
        raise RulesError(f"{where}: lead_minutes: {rule.lead_minutes:g} is beyond horizon_minutes "
                         f"{rule.horizon_minutes:g}")
    lo, hi = s.value_range(rule.metric)  # the range /predict checks a request's threshold against
    if not lo <= rule.threshold <= hi:
        raise RulesError(f"{where}: threshold: {rule.threshold:g} is outside {rule.metric}'s range "
                         f"[{lo:g}, {hi:g}]")
    return rule


def _keys(item: Any, known: tuple[str, ...], where: str) -> dict:
    if not isinstance(item, dict):
        raise RulesError(f"{where}: must be a mapping with {', '.join(known)}, got {item!r}")
    unknown = sorted(str(k) for k in set(item) - set(known))
    if unknown:
        raise RulesError(f"{where}: unknown field(s) {unknown}; known: {list(known)}")
    return item


def _new_rule(item: dict, where: str) -> AlertingRule:
    metric = item.get("metric")
    if metric not in s.METRICS:
        raise RulesError(f"{where}: metric: {metric!r} is not in the metric catalogue "
                         f"(features/schema.py): {', '.join(s.METRICS)}")
    for key in ("lead_minutes", "horizon_minutes"):
        if key not in item:
            raise RulesError(f"{where}: {key}: missing")
    spec = s.METRICS[metric]
    given = _settings(item, where)
    return AlertingRule(name=item["name"], metric=metric, threshold=given.get("threshold", spec.threshold),
                        direction=given.get("direction", spec.direction), lead_minutes=given["lead_minutes"],
                        horizon_minutes=given["horizon_minutes"], severity=given.get("severity", "warning"))


def _read(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    return _keys(doc if doc is not None else {}, ("rules", "overrides"), str(path))


def _merge(catalog: Catalog, path: Path, doc: dict, *, base: bool) -> None:
    """Add or change ``doc``'s rules in ``catalog``, then its overrides."""
    items = doc.get("rules") or []
    if not isinstance(items, list) or (base and not items):
        raise RulesError(f"{path}: rules: expected a list of rules")
    seen: set[str] = set()
    for i, raw in enumerate(items):
        item = _keys(raw, RULE_KEYS, f"{path}: rule {i + 1}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise RulesError(f"{path}: rule {i + 1}: name: missing")
        where = f"{path}: rule {name!r}"
        if name in seen:
            raise RulesError(f"{where}: name: repeated in the same file")
        seen.add(name)
        if name in catalog.rules and not base:  # an operator changes a catalogue rule
            old = catalog.rules[name]
            if "metric" in item and item["metric"] != old.metric:
                raise RulesError(f"{where}: metric: the catalogue's rule watches {old.metric}; "
                                 "give a new rule its own name")
            catalog.rules[name] = _checked(replace(old, **_settings(item, where)), where)
        else:
            catalog.rules[name] = _checked(_new_rule(item, where), where)
    overrides = doc.get("overrides") or []
    if not isinstance(overrides, list):
        raise RulesError(f"{path}: overrides: expected a list")
    for i, raw in enumerate(overrides):
        item = _keys(raw, OVERRIDE_KEYS, f"{path}: override {i + 1}")
        name, entity = item.get("rule"), item.get("entity")
        where = f"{path}: override {i + 1} (rule {name!r}, entity {entity!r})"
        if name not in catalog.rules:
            raise RulesError(f"{where}: rule: no such rule; known: {', '.join(sorted(catalog.rules))}")
        if not isinstance(entity, str) or not entity:
            raise RulesError(f"{where}: entity: the workload, service or node it applies to is missing")
        changes = {**catalog.overrides.get((name, entity), {}), **_settings(item, where)}
        _checked(replace(catalog.rules[name], **changes), where)
        catalog.overrides[(name, entity)] = changes
    catalog.files.append(str(path))


def load_catalog(extra: str | Path | None = None) -> Catalog:
    """The committed catalogue, then the operator's file (``extra``, else ``PREALERT_RULES``).

    Raises ``RulesError`` naming the file, the rule and the field on the first problem found.
    """
    catalog = Catalog(rules={})
    _merge(catalog, CATALOG_PATH, _read(CATALOG_PATH), base=True)
    extra = extra or os.environ.get(RULES_ENV, "").strip() or None
    if extra:
        _merge(catalog, Path(extra), _read(Path(extra)), base=False)
    # overrides set in a file apply over rule changes made later in the same file
    for (name, entity), changes in catalog.overrides.items():
        _checked(replace(catalog.rules[name], **changes), f"{catalog.files[-1]}: override ({name}, {entity})")
    return catalog

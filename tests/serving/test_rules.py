"""The rules catalogue: the committed file covers the seed's alarm targets; operators' files override and
are validated with errors naming the file, the rule and the field."""

from pathlib import Path

import pytest

from features import schema as s
from serving.rules import CATALOG_PATH, RULES_ENV, RulesError, load_catalog

#: the vendor's table of alarm targets (DOMAIN.md), as prealert's metric names
ALARM_TARGETS = {"jvm_heap_pct", "jvm_metaspace_pct", "gc_time_pct", "apdex", "error_rate_pct",
                 "db_response_time_ms", "pending_transactions", "db_pool_pct", "web_requests_per_s",
                 "web_worker_pct", "cpu_pct", "mem_pct", "swap_pct", "disk_pct", "net_packet_errors_per_s",
                 "cubrid_cas_pct"}


def test_the_catalogue_covers_every_alarm_target_with_the_metric_catalogues_defaults(monkeypatch):
    monkeypatch.delenv(RULES_ENV, raising=False)
    catalog = load_catalog()
    assert {r.metric for r in catalog.rules.values()} == ALARM_TARGETS
    for rule in catalog.rules.values():
        spec = s.METRICS[rule.metric]  # one source of truth for thresholds and directions
        assert (rule.threshold, rule.direction) == (spec.threshold, spec.direction)
        assert 0 < rule.lead_minutes <= rule.horizon_minutes <= 360
    assert catalog.rule("apdex").direction == "below"
    assert catalog.files == [str(CATALOG_PATH)]
    assert "threshold" not in CATALOG_PATH.read_text().split("rules:")[1]  # not restated


def test_an_operator_file_changes_rules_adds_rules_and_overrides_per_entity(tmp_path, monkeypatch):
    mine = tmp_path / "mine.yaml"
    mine.write_text("""
rules:
  - {name: jvm_heap, threshold: 85}
  - {name: heap_early, metric: jvm_heap_pct, lead_minutes: 120, horizon_minutes: 240, severity: info}
overrides:
  - {rule: jvm_heap, entity: portal-demo, threshold: 80, lead_minutes: 60}
""")
    monkeypatch.setenv(RULES_ENV, str(mine))
    catalog = load_catalog()
    assert catalog.rule("jvm_heap").threshold == 85
    assert catalog.rule("jvm_heap", "groupware-demo").threshold == 85
    portal = catalog.rule("jvm_heap", "portal-demo")
    assert (portal.threshold, portal.lead_minutes, portal.horizon_minutes) == (80, 60, 240)
    assert catalog.rule("heap_early").severity == "info"
    assert catalog.for_metric("jvm_heap_pct") == ["jvm_heap", "heap_early"]
    assert catalog.files[-1] == str(mine)
    with pytest.raises(KeyError, match="no rule 'nope'"):
        catalog.rule("nope")


@pytest.mark.parametrize(("text", "phrase"), [
    ("rules: [{name: jvm_heap, threshold: high}]", "rule 'jvm_heap': threshold: must be a finite number"),
    ("rules: [{name: jvm_heap, threshold: 120}]", "threshold: 120 is outside jvm_heap_pct's"),
    ("rules: [{name: apdex, direction: down}]", "rule 'apdex': direction: must be 'above' or 'below'"),
    ("rules: [{name: cpu, lead_minutes: 300}]", "rule 'cpu': lead_minutes: 300 is beyond horizon_minutes"),
    ("rules: [{name: cpu, horizon_minutes: 0}]", "rule 'cpu': horizon_minutes: must be in (0, 1440]"),
    ("rules: [{name: cpu, metric: mem_pct}]", "rule 'cpu': metric: the catalogue's rule watches cpu_pct"),
    ("rules: [{name: x, metric: heap, lead_minutes: 5, horizon_minutes: 10}]",
     "rule 'x': metric: 'heap' is not in the metric catalogue"),
    ("rules: [{name: x, metric: cpu_pct, horizon_minutes: 10}]", "rule 'x': lead_minutes: missing"),
    ("rules: [{name: cpu, colour: red}]", "rule 1: unknown field(s) ['colour']"),
    ("rules: [{threshold: 3}]", "rule 1: name: missing"),
    ("rules: [{name: cpu}, {name: cpu}]", "rule 'cpu': name: repeated"),
    ("overrides: [{rule: nope, entity: a}]", "override 1 (rule 'nope', entity 'a'): rule: no such rule"),
    ("overrides: [{rule: cpu, threshold: 1}]", "override 1 (rule 'cpu', entity None): entity: "),
    ("overrides: [{rule: cpu, entity: a, lead_minutes: 999}]", "(rule 'cpu', entity 'a'): lead_minutes: 999"),
    ("overrides: [{rule: jvm_heap, entity: portal, threshold: 150}]",
     "override 1 (rule 'jvm_heap', entity 'portal'): threshold: 150 is outside jvm_heap_pct's range "
     "[0, 100]"),
    ("overrides: [{rule: apdex, entity: shop, threshold: -0.5}]",
     "(rule 'apdex', entity 'shop'): threshold: -0.5 is outside apdex's range [0, 1]"),
    ("rules: {cpu: 1}", "rules: expected a list"),
    ("alerts: []", "unknown field(s) ['alerts']"),
    ("rules: [unclosed", "not valid YAML"),
])
def test_a_bad_operator_file_names_the_file_the_rule_and_the_field(tmp_path, text, phrase):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(RulesError) as err:
        load_catalog(bad)
    assert str(err.value).startswith(f"{bad}: ") and phrase in str(err.value)


def test_a_missing_operator_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(RulesError, match="cannot read the rules file"):
        load_catalog(tmp_path / "absent.yaml")


def test_a_watch_rule_may_name_a_catalogue_rule(tmp_path, monkeypatch):
    from serving.predictor import Predictor
    from serving.schemas import PredictRequest
    from serving.watch import load_rules
    from training.bundle import ModelBundle

    mine = tmp_path / "mine.yaml"
    mine.write_text("overrides:\n"
                    "  - {rule: jvm_heap, entity: golden-app, threshold: 68, horizon_minutes: 120}\n")
    monkeypatch.setenv(RULES_ENV, str(mine))
    watch = tmp_path / "watch.yaml"
    watch.write_text("rules:\n"
                     "  - {name: heap, rule: jvm_heap, query: 'up', entity_label: service}\n"
                     "  - {name: heap-early, rule: jvm_heap, query: 'up', horizon_minutes: 60}\n"
                     "  - {name: plain, query: 'up', metric: disk_pct}\n")
    heap, early, plain = load_rules(watch)
    assert (heap.metric, heap.rule, heap.threshold, heap.direction, heap.horizon_minutes) == (
        "jvm_heap_pct", "jvm_heap", None, None, None)  # decided per series, with its overrides
    assert (early.horizon_minutes, plain.rule, plain.threshold) == (60, None, 90)
    # what the watch asks the predictor for a golden-app series: the override for that entity
    golden = Path(__file__).resolve().parents[2] / "data" / "sample" / "golden_bundle"
    answer = Predictor(ModelBundle.load(golden)).predict(PredictRequest(
        metric=heap.metric, labels={"service": "golden-app"}, rule=heap.rule))
    assert (answer.threshold, answer.horizon_minutes, answer.direction) == (68, 120, "above")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: x, rule: nope, query: up}]\n")
    with pytest.raises(ValueError, match="rule 'nope' is not in the rules catalogue"):
        load_rules(bad)
    bad.write_text("rules: [{name: x, rule: cpu, metric: mem_pct, query: up}]\n")
    with pytest.raises(ValueError, match="is not the one rule 'cpu' watches"):
        load_rules(bad)

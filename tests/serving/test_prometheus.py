"""Against real Prometheus, node_exporter and Alertmanager processes: export, watch, alert push."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest

from features import schema as s
from serving.alertmanager import ALERTNAME, AlertPusher
from serving.server import free_port

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "data" / "sample" / "golden_bundle"
BINARIES = {name: shutil.which(name) or f"/usr/bin/{name}"
            for name in ("prometheus", "prometheus-node-exporter", "prometheus-alertmanager")}
MISSING = [n for n, p in BINARIES.items() if not os.access(p, os.X_OK)]

pytestmark = [
    pytest.mark.prometheus, pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"needs Debian's {', '.join(MISSING)} "
                       "(apt-get install prometheus prometheus-node-exporter prometheus-alertmanager; "
                       ".ci/run installs them)"),
]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    """A server in its own process group, so teardown stops it (and only it) by its id."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=ROOT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait(check: Callable[[], object], what: str, proc: subprocess.Popen | None = None,
          log: Path | None = None, timeout: float = 30.0):
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (with the log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            got = check()
            if got:
                return got
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    pytest.fail(f"{what} not reached in {timeout:.0f} s (exit {proc and proc.poll()})\n{tail}")


def _query(prom: str, expr: str) -> list[dict]:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def _prealert(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """node_exporter, Prometheus (scraping it and the watch port every second, with the committed
    alert rules) and Alertmanager, each our own process on a free loopback port."""
    work = tmp_path_factory.mktemp("prom")
    ports = {k: free_port() for k in ("node", "prom", "am", "watch")}
    procs: list[subprocess.Popen] = []
    shutil.copy(ROOT / "deploy" / "prometheus" / "prealert-rules.yml", work / "prealert-rules.yml")
    (work / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [prealert-rules.yml]
scrape_configs:
  - job_name: node
    static_configs: [{{targets: ["127.0.0.1:{ports['node']}"]}}]
  - job_name: prealert
    static_configs: [{{targets: ["127.0.0.1:{ports['watch']}"]}}]
""")
    (work / "alertmanager.yml").write_text("route: {receiver: blackhole}\nreceivers: [{name: blackhole}]\n")
    try:
        procs.append(_start([BINARIES["prometheus-node-exporter"],
                             f"--web.listen-address=127.0.0.1:{ports['node']}",
                             "--collector.disable-defaults", "--collector.meminfo",
                             "--collector.loadavg", "--collector.cpu"], work / "node.log"))
        procs.append(_start([BINARIES["prometheus"], f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{ports['prom']}"], work / "prom.log"))
        procs.append(_start([BINARIES["prometheus-alertmanager"],
                             f"--config.file={work / 'alertmanager.yml'}",
                             f"--storage.path={work / 'am'}", "--cluster.listen-address=",
                             f"--web.listen-address=127.0.0.1:{ports['am']}"], work / "am.log"))
        urls = {k: f"http://127.0.0.1:{ports[k]}" for k in ports}
        for key, proc, log in zip(("node", "prom", "am"), procs, ("node", "prom", "am"), strict=True):
            path = "/metrics" if key == "node" else "/-/ready"
            _wait(lambda u=urls[key] + path: httpx.get(u, timeout=2).status_code == 200,
                  f"{key} ready", proc, work / f"{log}.log")
        # a few seconds of node data before anyone reads it
        _wait(lambda: float(_query(urls["prom"], 'count_over_time(up{job="node"}[1m])')[0]["value"][1]) >= 8,
              "8 node_exporter scrapes", procs[1], work / "prom.log")
        yield {"urls": urls, "work": work, "watch_port": ports["watch"]}
    finally:
        for proc in procs:
            _stop(proc)


MEM_PCT = ('label_replace(100 * (1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes), '
           '"__name__", "mem_pct", "", "")')


def test_export_matches_query_range_and_feeds_the_feature_job(stack, tmp_path):
    prom = stack["urls"]["prom"]
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    start = end - timedelta(seconds=7)
    out = tmp_path / "node.parquet"
    # --max-points 3 splits the 8 steps into 3 requests per query: the stitched result must
    # equal one unchunked query_range
    # the second query names its expression's result as the README shows (label_replace on __name__)
    run = _prealert("export", "prometheus", "--url", prom, "--query", "node_load1",
                    "--query", MEM_PCT, "--start", start.isoformat(),
                    "--end", end.isoformat(), "--step", "1s", "--label", "instance=node",
                    "--max-points", "3", "--out", str(out))
    print(run.stdout, run.stderr)
    assert run.returncode == 0, run.stderr
    assert "in 6 request(s)" in run.stdout
    export = pl.read_parquet(out)
    assert export.columns == [s.TS, s.SERVICE, s.POD, s.NODE, s.METRIC, s.VALUE, "job"]
    assert export.schema[s.TS] == pl.Datetime("us", "UTC")
    for metric, query in (("node_load1", "node_load1"), ("mem_pct", MEM_PCT)):
        body = httpx.get(f"{prom}/api/v1/query_range", timeout=5, params={
            "query": query, "start": start.timestamp(), "end": end.timestamp(), "step": "1s"}).json()
        assert body["status"] == "success"
        (series,) = body["data"]["result"]
        direct = [(datetime.fromtimestamp(t, UTC), float(v)) for t, v in series["values"]]
        mine = export.filter(pl.col(s.METRIC) == metric).sort(s.TS)
        assert len(direct) >= 4 and mine.height == len(direct)
        assert list(zip(mine[s.TS], mine[s.VALUE], strict=True)) == direct
        assert set(mine[s.NODE]) == {series["metric"]["instance"]}
        assert set(mine["job"]) == {series["metric"]["job"]}

    features = tmp_path / "features"
    run = _prealert("features", "build", "--input", str(out), "--out", str(features), "--step", "1m",
                    "--quiet")
    print(run.stdout, run.stderr)
    assert run.returncode == 0, run.stderr
    series = pl.read_parquet(features / "series.parquet")
    node = export[s.NODE][0]
    assert {f"{node}/node_load1", f"{node}/mem_pct"} <= set(series[s.SERIES_ID])


def test_export_reports_prometheus_errors_in_one_line(stack, tmp_path):
    cases = {
        "bad query": ([stack["urls"]["prom"], "rate(node_load1["], "error: Prometheus bad_data:"),
        "unreachable": ([f"http://127.0.0.1:{free_port()}", "up"], "error: cannot reach Prometheus"),
        "not Prometheus": ([stack["urls"]["am"], "up"], "error: Prometheus at"),
        "no series": ([stack["urls"]["prom"], "no_such_metric"], "error: no series"),
    }
    for what, ((url, query), expected) in cases.items():
        out = tmp_path / f"{what}.parquet"
        run = _prealert("export", "prometheus", "--url", url, "--query", query, "--start", "now-1m",
                        "--out", str(out))
        print(f"{what}: exit {run.returncode}: {run.stderr.strip()}")
        assert run.returncode == 2, what
        assert run.stderr.startswith(expected) and run.stderr.count("\n") == 1, (what, run.stderr)
        assert not out.exists()


RULES = """
rules:
  # node_exporter's memory use relabelled as the golden bundle's series golden-app/jvm_heap_pct
  # (label_replace on an empty source label adds service="golden-app"), so the committed bundle
  # has a model for it. Threshold 1 % lies below any real memory use: the answer is "already
  # crossed", the alert rule fires and the alert is pushed to Alertmanager.
  - name: heap-crossed
    query: &golden_heap >-
      label_replace(100 * (1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes),
                    "service", "golden-app", "", "")
    metric: jvm_heap_pct
    threshold: 1
  # the same series at a real threshold: a forecast answer (finite minutes or +Inf)
  - name: heap-high
    query: *golden_heap  # the same query (YAML alias)
    metric: jvm_heap_pct
    threshold: 99.5
    horizon_minutes: 120
  # node load has no model in the bundle: counted as unknown_series, the cycle goes on
  - name: load
    query: node_load1
    metric: node_load1
    threshold: 4
    entity_label: instance
    entity_kind: node
  # a broken query: counted as query_failed
  - name: broken
    query: 'rate(node_load1['
    metric: node_load1
    threshold: 4
"""


def _own_metrics(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for sample in family.samples:
            key = sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items())
                                        if k in ("reason", "rule", "quantile"))
            out[key] = sample.value
    return out


def test_watch_is_scraped_by_prometheus_and_pushes_to_alertmanager(stack, tmp_path):
    prom, am = stack["urls"]["prom"], stack["urls"]["am"]
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    log = tmp_path / "watch.log"
    watch = _start([sys.executable, "-m", "serving.cli", "watch", "--prometheus-url", prom,
                    "--rules", str(rules), "--bundle", str(GOLDEN), "--interval", "2",
                    "--step", "1s", "--port", str(stack["watch_port"]), "--alertmanager-url", am,
                    "--ends-after-cycles", "30"], log)
    own = f"http://127.0.0.1:{stack['watch_port']}/metrics"
    try:
        scraped = _wait(lambda: _query(prom, 'prealert_minutes_to_threshold{rule="heap-crossed"}'),
                        "Prometheus scraping prealert_minutes_to_threshold", watch, log, timeout=60)
        print(f"scraped by Prometheus: {[(r['metric']['quantile'], r['value'][1]) for r in scraped]}")
        assert {r["metric"]["quantile"] for r in scraped} == {"0.1", "0.5", "0.9"}
        assert all(r["metric"]["series_id"] == "golden-app/jvm_heap_pct" for r in scraped)
        assert all(r["metric"]["service"] == "golden-app" and r["metric"]["job"] == "prealert"
                   for r in scraped)
        assert all(float(r["value"][1]) == 0.0 for r in scraped)  # already crossed
        high = _query(prom, 'prealert_minutes_to_threshold{rule="heap-high", quantile="0.5"}')
        prob = _query(prom, 'prealert_crossing_probability{rule="heap-high"}')
        print(f"heap-high: median minutes {high[0]['value'][1]}, probability {prob[0]['value'][1]}")
        assert float(high[0]["value"][1]) > 0 and 0 <= float(prob[0]["value"][1]) <= 1
        # a plain Prometheus expression over it, as an alert rule would use
        assert _query(prom, 'prealert_minutes_to_threshold{quantile="0.5"} < 30')
        counted = 'prealert_watch_errors_total{reason=~"unknown_series|query_failed"} > 0'
        errors = _wait(lambda: _query(prom, counted), "errors counted", watch, log)
        print(f"errors counted: {sorted((r['metric']['reason'], r['value'][1]) for r in errors)}")
        assert {r["metric"]["reason"] for r in errors} == {"unknown_series", "query_failed"}

        def pushed():
            alerts = httpx.get(f"{am}/api/v2/alerts", timeout=5,
                               params={"filter": f'alertname="{ALERTNAME}"'}).json()
            return [a for a in alerts if a["labels"].get("rule") == "heap-crossed"]

        (alert,) = _wait(pushed, "the alert in Alertmanager", watch, log)
        print(f"alert in Alertmanager: {alert['labels']} {alert['annotations']['message']!r} "
              f"state {alert['status']['state']}, ends {alert['endsAt']}")
        assert alert["labels"]["service"] == "golden-app" and alert["labels"]["severity"] == "warning"
        assert alert["status"]["state"] == "active"
        assert "already crossed" in alert["annotations"]["message"]
        assert alert["annotations"]["model_version"]
        # dedup: after several cycles each firing alert was posted once (endsAt is 60 s ahead)
        metrics = _wait(lambda: (m := _own_metrics(own)) and m["prealert_watch_cycles_total"] >= 4 and m,
                        "4 watch cycles", watch, log)
        firing = sum(v for k, v in metrics.items() if k.startswith("prealert_alert,"))
        print(f"after {metrics['prealert_watch_cycles_total']:.0f} cycles: {firing:.0f} firing, "
              f"{metrics['prealert_watch_alerts_pushed_total']:.0f} pushed")
        assert metrics["prealert_watch_alerts_pushed_total"] == firing >= 1
    finally:
        _stop(watch)
        print(log.read_text()[-1500:])


def test_pusher_refreshes_before_ends_at_and_not_on_new_content(stack):
    am = stack["urls"]["am"]
    pusher = AlertPusher(am, ends_after=timedelta(minutes=4), refresh_before=timedelta(minutes=2))
    labels = {"alertname": ALERTNAME, "rule": "dedup-test", "service": "golden-app", "severity": "info"}
    t0 = datetime.now(UTC).replace(microsecond=0)

    def in_am():
        alerts = httpx.get(f"{am}/api/v2/alerts", timeout=5,
                           params={"filter": 'rule="dedup-test"'}).json()
        return alerts[0] if alerts else None

    assert pusher.push([(labels, {"message": "first"})], t0) == 1
    first = _wait(in_am, "the first push")
    assert pusher.push([(labels, {"message": "new content"})], t0 + timedelta(minutes=1)) == 0
    assert pusher.push([(labels, {"message": "refresh"})], t0 + timedelta(minutes=2, seconds=1)) == 1
    refreshed = _wait(lambda: (a := in_am()) and a["annotations"]["message"] == "refresh" and a,
                      "the refresh")
    print(f"first ends {first['endsAt']}, refreshed ends {refreshed['endsAt']}, starts "
          f"{first['startsAt']} -> {refreshed['startsAt']}")
    assert refreshed["startsAt"] == first["startsAt"]
    assert refreshed["endsAt"] > first["endsAt"]
    assert not math.isnan(pusher.pushes) and pusher.pushes == 2


PULL_RULES = """
rules:
  # node_exporter's memory use as the golden bundle's series golden-app/jvm_heap_pct (as above)
  - name: heap
    query: >-
      label_replace(100 * (1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes),
                    "service", "golden-app", "", "")
    metric: jvm_heap_pct
  # an apdex query that returns another workload only: golden-app/apdex is not in its result
  - name: apdex
    query: 'label_replace(node_load1 * 0 + 0.9, "service", "elsewhere", "", "")'
    metric: apdex
"""


def test_predict_without_recent_pulls_the_window_from_prometheus_once_per_ttl(stack, client, tmp_path,
                                                                               monkeypatch):
    """The service (in process, over the golden bundle) configured with a Prometheus source answers
    /predict, /predict_batch and /alerts without 'recent': one range query per rule query and TTL."""
    from serving.http_edge import _service
    from serving.predictor import Predictor
    from serving.source import PrometheusSource

    prom = stack["urls"]["prom"]
    rules = tmp_path / "rules.yml"
    rules.write_text(PULL_RULES)
    for name, value in (("URL", prom), ("RULES", str(rules)), ("TTL_SECONDS", "60"), ("STEP", "1s")):
        monkeypatch.setenv(f"PREALERT_PROMETHEUS_{name}", value)
    source = PrometheusSource.from_environment()
    follower = _service().follower
    served = follower.predictor
    monkeypatch.setattr(follower, "predictor", Predictor(served.bundle, served.catalog, source=source))
    heap = {"series_id": "golden-app/jvm_heap_pct", "rule": "jvm_heap"}  # all an alerting system sends

    r = client.post("/predict", json=heap)
    assert r.status_code == 200, r.text
    answer = r.json()
    fetched = source._cache[source.rules[0].query]
    # the same range asked of Prometheus directly: its latest sample is the answer's 'now'
    direct = httpx.post(f"{prom}/api/v1/query_range", timeout=10, data={
        "query": source.rules[0].query, "start": f"{fetched.start.timestamp():.3f}",
        "end": f"{fetched.end.timestamp():.3f}", "step": "1"}).json()["data"]["result"]
    (only,) = direct
    latest = datetime.fromtimestamp(only["values"][-1][0], UTC)
    print(f"/predict without recent: now {answer['now']} (Prometheus' latest sample {latest.isoformat()}, "
          f"{len(only['values'])} samples), {answer['message']!r}")
    assert datetime.fromisoformat(answer["now"].replace("Z", "+00:00")) == latest
    assert answer["series_id"] == "golden-app/jvm_heap_pct" and answer["rule"] == "jvm_heap"
    assert source.range_queries == 1

    # within the TTL: /predict again, a batch and /alerts are answered from the cache
    again = client.post("/predict", json={"rule": "jvm_heap", "labels": {"service": "golden-app"}})
    assert again.status_code == 200 and again.json()["now"] == answer["now"]
    batch = client.post("/predict_batch", json={"items": [heap, {"series_id": "golden-app/apdex"}]}).json()
    assert [i["status"] for i in batch["results"]] == [200, 404], batch
    assert batch["results"][0]["answer"]["now"] == answer["now"]
    message = batch["results"][1]["error"]["message"]
    print(f"golden-app/apdex: {message}")
    assert "Prometheus returned no series 'golden-app/apdex'" in message and "elsewhere/apdex" in message
    alerts = client.post("/alerts", json={"series": [{"series_id": heap["series_id"]}],
                                          "rules": ["jvm_heap"]}).json()
    assert alerts["checked"] == 1 and not alerts["skipped"], alerts
    status = client.get("/status").json()["prometheus_source"]
    print(f"/status prometheus_source: {status}")
    assert status["range_queries"] == source.range_queries == 2  # heap once, apdex once
    assert status["cache_hits"] == 3

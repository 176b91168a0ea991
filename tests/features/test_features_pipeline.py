"""Tests for the feature job at production depth: configs, wide exports, quarantine reasons, counters,
rollup columns, pod lifetimes, feature tables without look-ahead, the output folder and the CLI."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from test_features_build import export_rows
from typer.testing import CliRunner

from features import build as b
from features import schema as s
from features.config import BuildConfig, ExportConfig, load_config
from features.tables import entity_tables, feature_table

T0 = datetime(2026, 9, 21, 10, 0, tzinfo=UTC)


def export(rows: list[tuple], t0: datetime = T0) -> pl.DataFrame:
    """``(second, pod, metric, value[, node[, service]])`` tuples -> an export frame."""
    return export_rows(t0, rows)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def accounted(report: b.BuildReport) -> bool:
    return report.rows_read == (report.rows_kept + report.exact_duplicates_merged
                                + sum(report.quarantined.values()))


# --- one test per quarantine reason -----------------------------------------------------------

REASON_CASES = {
    "unparseable_timestamp": pl.DataFrame(
        {s.TS: ["not a time"], s.POD: ["app-0"], s.METRIC: ["cpu_pct"], s.VALUE: [1.0]}),
    "time_out_of_range": export([(0, "app-0", "cpu_pct", 1.0)], t0=datetime(1999, 12, 31, tzinfo=UTC)),
    "missing_metric": export([(0, "app-0", None, 1.0)]),
    "unknown_pod_name": export([(0, "nginx", "cpu_pct", 1.0, "worker-1")]),
    "no_workload_or_node": export([(0, None, "cpu_pct", 1.0)]),
    "missing_or_nan_value": export([(0, "app-0", "cpu_pct", float("nan"))]),
    "infinite_value": export([(0, "app-0", "tps", float("inf"))]),
    "out_of_range": export([(0, "app-0", "cpu_pct", -0.5)]),  # a negative percentage
    "duplicate_conflicting_value": export([(0, "app-0", "cpu_pct", 1.0), (0, "app-0", "cpu_pct", 2.0)]),
}


def test_every_reason_has_a_case():
    assert set(REASON_CASES) == set(b.REASONS)


@pytest.mark.parametrize("reason", list(REASON_CASES))
def test_each_reason_quarantines_its_row(write_export, tmp_path, reason):
    frame = pl.concat([export([(60, "app-0", "cpu_pct", 5.0)]).with_columns(
        pl.col(s.TS).cast(REASON_CASES[reason].schema[s.TS]) if REASON_CASES[reason].schema[s.TS]
        == pl.String else pl.col(s.TS)), REASON_CASES[reason]], how="diagonal_relaxed")
    report = b.run_build(write_export(frame), tmp_path / "out", step="1m")
    assert report.quarantined == {reason: 1}
    assert accounted(report)
    q = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert q[b.REASON].to_list() == [reason]


def test_a_node_level_metric_with_an_odd_pod_name_stays_on_its_node(t0):
    series, quarantine, _ = b.build_series(export([(0, "nginx", "disk_pct", 50.0, "worker-1")]).lazy())
    assert quarantine.collect().height == 0
    assert series.collect()[s.SERIES_ID].to_list() == ["worker-1/disk_pct"]


def test_unknown_pod_rows_never_leak_into_node_series(t0):
    rows = [(0, None, "cpu_pct", 10.0, "worker-1"), (0, "nginx", "cpu_pct", 90.0, "worker-1")]
    series, quarantine, _ = b.build_series(export(rows).lazy(), step="1m")
    assert series.collect().select(s.SERIES_ID, s.VALUE).rows() == [("worker-1/cpu_pct", 10.0)]
    assert quarantine.collect()[b.REASON].to_list() == ["unknown_pod_name"]


# --- pod names -> workloads -------------------------------------------------------------------

POD_TABLE = [
    # Kubernetes Deployment: <deployment>-<replicaset hash>-<pod hash>
    ("checkout-7d9f8b6c5d-x2x9k", "checkout"),
    ("api-gw-v3-5c7d9f8b6-q4w7z", "api-gw-v3"),
    # StatefulSet: <name>-<ordinal>
    ("postgres-0", "postgres"),
    ("cubrid-broker-11", "cubrid-broker"),
    # OpenShift DeploymentConfig: <dc>-<deploy number>-<hash>
    ("portal-demo-19-2xfkl", "portal-demo"),
    ("groupware-3-h7k2p", "groupware"),
    # no shape
    ("standalone", None),
    ("portal-demo-19-deploy", None),
]


@pytest.mark.parametrize(("pod", "workload"), POD_TABLE)
def test_pod_name_schemes(pod, workload):
    assert b.workload_of_pod(pod) == workload
    assert pl.select(b.workload_of(pl.lit(pod))).item() == workload


def test_a_config_regex_overrides_the_built_in_shapes(write_export, tmp_path):
    # pods named <team>.<app>.<n>: the built-in shapes do not know them
    cfg = BuildConfig(export=ExportConfig(pod_patterns=(r"^[a-z]+\.([a-z-]+)\.\d+$",)))
    rows = [(0, "pay.ledger.1", "cpu_pct", 10.0), (0, "pay.ledger.2", "cpu_pct", 30.0),
            (0, "postgres-0", "cpu_pct", 7.0)]
    source = write_export(export(rows))
    plain = b.run_build(source, tmp_path / "plain", step="1m")
    assert plain.quarantined == {"unknown_pod_name": 2}
    report = b.run_build(source, tmp_path / "out", step="1m", config=cfg)
    assert report.quarantined == {}
    got = b.load_series(tmp_path / "out").select(s.SERIES_ID, s.VALUE, s.N_PODS).rows()
    assert got == [("ledger/cpu_pct", 20.0, 2), ("postgres/cpu_pct", 7.0, 1)]
    pods = pl.read_parquet(tmp_path / "out" / "pods.parquet")
    assert pods["workload"].to_list() == ["ledger", "ledger", "postgres"]


def test_a_pattern_without_a_group_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[export]\npod_patterns = ["^x-\\\\d+$"]\n')
    with pytest.raises(ValueError, match="capture group"):
        load_config(path, env={})


# --- rollups, counters and rollup columns against a numpy oracle ------------------------------


def test_counter_with_a_reset_becomes_a_per_second_rate():
    # pod a: 0, 600 (+600 in 60 s), reset to 60 (+60), 660 (+600) ; pod b: 100, 160 (+60)
    rows = [
        (0, "web-0", "requests_total", 0.0), (60, "web-0", "requests_total", 600.0),
        (120, "web-0", "requests_total", 60.0), (180, "web-0", "requests_total", 660.0),
        (60, "web-1", "requests_total", 100.0), (120, "web-1", "requests_total", 160.0),
    ]
    series, quarantine, _ = b.build_series(export(rows).lazy(), step="1m", max_fill=0)
    got = series.collect().select(s.TS, s.VALUE, s.N_PODS)
    assert quarantine.collect().height == 0
    # minute 0 has only web-0's first sample: no rate yet, so the series starts at minute 1
    assert got[s.TS].to_list() == [T0 + timedelta(minutes=m) for m in (1, 2, 3)]
    assert got[s.VALUE].to_list() == pytest.approx([600 / 60, 60 / 60 + 60 / 60, 600 / 60])
    assert got[s.N_PODS].to_list() == [1, 2, 1]


def test_counter_rate_over_a_coarser_step_weights_by_time():
    rows = [(0, "web-0", "requests_total", 100.0), (20, "web-0", "requests_total", 300.0),
            (40, "web-0", "requests_total", 50.0), (300, "web-0", "requests_total", 650.0)]
    got = b.build_series(export(rows).lazy(), step="5m").series.collect()
    # bucket 0: increases 200 + 50 (reset) over 40 s; bucket 1: 600 over 260 s
    assert got[s.VALUE].to_list() == pytest.approx([250 / 40, 600 / 260])


def oracle(raw: pl.DataFrame, step_s: int) -> dict[tuple[str, int], tuple]:
    """Per series and bucket: (value, value_max, value_min, n_pods) computed with numpy."""
    out = {}
    buckets = (raw["second"].to_numpy() // step_s) * step_s
    keys = sorted(set(zip(raw["workload"].to_list(), raw["metric"].to_list(), buckets.tolist(),
                          strict=True)))
    for workload, metric, bucket in keys:
        mask = ((raw["workload"] == workload) & (raw["metric"] == metric)).to_numpy() & (buckets == bucket)
        part = raw.filter(pl.Series(mask))
        per_pod = np.array([part.filter(pl.col("pod") == p)["value"].to_numpy().mean()
                            for p in sorted(set(part["pod"].to_list()))])
        spec = s.spec_for(metric)
        value = {"mean": per_pod.mean(), "sum": per_pod.sum(), "max": per_pod.max()}[spec.rollup]
        rollups = s.KINDS[spec.kind].rollups
        out[(f"{workload}/{metric}", bucket)] = (
            value, per_pod.max() if "max" in rollups else None,
            per_pod.min() if "min" in rollups else None, len(per_pod))
    return out


@pytest.mark.parametrize("step_s", [60, 300])
def test_rollup_columns_match_a_numpy_oracle(rng, step_s):
    pods = {"portal-demo-19-2xfkl": "portal-demo", "portal-demo-20-q8zrm": "portal-demo",
            "cubrid-broker-0": "cubrid-broker", "cubrid-broker-1": "cubrid-broker"}
    metrics = {"jvm_heap_pct": 100, "apdex": 1, "tps": 300, "response_time_ms": 4000}
    records = []
    for pod, workload in pods.items():
        for metric, high in metrics.items():
            for second in np.sort(rng.choice(900, size=int(rng.integers(5, 30)), replace=False)):
                records.append((int(second), pod, workload, metric, float(rng.uniform(0, high))))
    raw = pl.DataFrame(records, schema=["second", "pod", "workload", "metric", "value"], orient="row")
    frame = export([(r[0], r[1], r[3], r[4]) for r in records])
    got = b.build_series(frame.lazy(), step=f"{step_s // 60}m", max_fill=0).series.collect()
    got = got.filter(pl.col(s.N_PODS) > 0)
    want = oracle(raw, step_s)
    assert got.height == len(want)
    for row in got.iter_rows(named=True):
        bucket = int((row[s.TS] - T0).total_seconds())
        value, vmax, vmin, n = want[(row[s.SERIES_ID], bucket)]
        assert row[s.VALUE] == pytest.approx(value, rel=1e-12)
        assert row[s.N_PODS] == n
        assert (row[s.VALUE_MAX] is None) == (vmax is None)
        assert (row[s.VALUE_MIN] is None) == (vmin is None)
        if vmax is not None:
            assert row[s.VALUE_MAX] == pytest.approx(vmax, rel=1e-12)
        if vmin is not None:
            assert row[s.VALUE_MIN] == pytest.approx(vmin, rel=1e-12)


def test_every_kind_has_a_rule_and_every_metric_a_kind():
    for spec in s.METRICS.values():
        assert spec.kind in s.KINDS
        rule = s.KINDS[spec.kind]
        assert rule.lower <= spec.lower and spec.upper <= rule.upper
    assert s.METRICS["requests_total"].is_counter
    assert s.KINDS["rate"].rollups == ("sum",)
    assert {"mean", "max"} <= set(s.KINDS["percent"].rollups)
    assert {"mean", "max"} <= set(s.KINDS["latency"].rollups)


# --- input contract: wide exports, column mapping, time encodings, config files ----------------


def test_wide_export_with_mapped_columns_and_epoch_milliseconds(write_export, tmp_path):
    wide = pl.DataFrame({
        "time_ms": [int(T0.timestamp() * 1000) + 60_000 * i for i in range(3)],
        "machine": ["db-host"] * 3,
        "cpu": [10.0, 20.0, 30.0],
        "disk": [1, 2, 3],  # an integer metric column
    })
    source = write_export(wide)
    cfg_file = tmp_path / "wide.toml"
    cfg_file.write_text(
        '[export]\nformat = "wide"\nepoch_unit = "ms"\nmetrics = ["cpu", "disk"]\n'
        '[export.columns]\nts = "time_ms"\nnode = "machine"\n[build]\nstep = "1m"\n')
    cfg = load_config(cfg_file, env={})
    report = b.run_build(source, tmp_path / "out", step=cfg.step, config=cfg)
    assert report.rows_read == 6 and accounted(report)
    got = b.load_series(tmp_path / "out").select(s.SERIES_ID, s.TS, s.VALUE).rows()
    assert got == [("db-host/cpu", T0 + timedelta(minutes=i), 10.0 * (i + 1)) for i in range(3)] + [
        ("db-host/disk", T0 + timedelta(minutes=i), float(i + 1)) for i in range(3)]


def test_naive_timestamps_are_read_in_the_configured_zone(write_export):
    local = pl.DataFrame({"when": [datetime(2026, 9, 21, 19, 0)], "host": ["h"], "metric": ["m"],
                          "value": [1.0]})
    cfg = ExportConfig(columns={"ts": "when", "node": "host"}, timezone="Asia/Seoul")
    got = b.scan_export(write_export(local), export=cfg).collect()
    assert got[s.TS].to_list() == [T0]  # 19:00 KST is 10:00 UTC
    assert got[s.NODE].to_list() == ["h"]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns", "auto"])
def test_epoch_units(write_export, unit):
    scale = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9, "auto": 1e3}[unit]
    frame = pl.DataFrame({s.TS: [int(T0.timestamp() * scale)], s.METRIC: ["m"], s.VALUE: [1.0]})
    got = b.scan_export(write_export(frame), export=ExportConfig(epoch_unit=unit)).collect()
    assert got[s.TS].to_list() == [T0]


def test_env_overrides_the_file_and_the_shipped_configs_load(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[build]\nstep = "5m"\nmax_fill = 2\n')
    assert load_config(path, env={}).step == "5m"
    cfg = load_config(path, env={"PREALERT_STEP": "1m", "PREALERT_MAX_FILL": "4"})
    assert (cfg.step, cfg.max_fill) == ("1m", 4)
    configs = Path(b.__file__).parent / "configs"
    smd = load_config(configs / "smd.toml", env={})
    assert smd.export.rename() == {"host": "node"}
    assert load_config(configs / "sample.toml", env={}).step == "5m"


@pytest.mark.parametrize(
    ("text", "phrase"),
    [("[export\n", "not valid TOML"), ("[export]\nfromat = 'wide'\n", "unknown key"),
     ("[export]\ntimezone = 'Mars/Olympus'\n", "unknown timezone"),
     ("[export]\nformat = 'columnar'\n", "format must be"), ("[other]\n", "unknown table")],
)
def test_a_bad_config_names_the_file_and_the_problem(tmp_path, text, phrase):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=phrase) as err:
        load_config(path, env={})
    assert str(path) in str(err.value)


# --- broken inputs: clear errors naming the file, nothing written -----------------------------


def broken(kind: str, root: Path) -> tuple[str | Path, str]:
    good = export([(0, "app-0", "cpu_pct", 1.0)])
    folder = root / "export"
    folder.mkdir()
    if kind == "not-parquet":
        (folder / "a.parquet").write_text("ts,pod,metric,value\n2026-09-21,a-0,cpu_pct,1\n")
        return folder / "a.parquet", "not a Parquet file"
    if kind == "truncated":
        good.write_parquet(folder / "a.parquet")
        data = (folder / "a.parquet").read_bytes()
        (folder / "a.parquet").write_bytes(data[:8] + data[-8:])
        return folder / "a.parquet", "a.parquet"
    if kind == "empty":
        good.clear().write_parquet(folder / "a.parquet")
        return folder / "a.parquet", "holds no rows"
    if kind == "wrong-schema":
        good.write_parquet(folder / "a.parquet")
        good.drop(s.METRIC).write_parquet(folder / "b.parquet")
        return folder, "b.parquet: missing column(s) ['metric']"
    if kind == "mixed-types":
        good.write_parquet(folder / "a.parquet")
        good.with_columns(pl.col(s.TS).dt.strftime("%FT%T")).write_parquet(folder / "b.parquet")
        return folder, "b.parquet: column 'ts' is String"
    if kind == "calendar-step":
        good.write_parquet(folder / "a.parquet")
        return folder / "a.parquet", "not a fixed duration"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["not-parquet", "truncated", "empty", "wrong-schema", "mixed-types", "calendar-step"])
def test_a_broken_export_is_a_clear_error_and_writes_nothing(tmp_path, kind):
    source, phrase = broken(kind, tmp_path)
    with pytest.raises(ValueError) as err:
        b.run_build(source, tmp_path / "out", step="1mo" if kind == "calendar-step" else "1m")
    assert phrase in str(err.value)
    assert not (tmp_path / "out").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"export"}


# --- the output folder ------------------------------------------------------------------------


def dirty_export(rng: np.random.Generator) -> pl.DataFrame:
    rows = []
    for pod in ("portal-demo-19-2xfkl", "portal-demo-19-q8zrm", "cubrid-0"):
        total = 0.0
        for minute in range(90):
            if 30 <= minute < 34 or minute == 50:  # a long and a short gap
                continue
            total = 0.0 if minute == 60 else total + float(rng.integers(50, 150))
            rows += [(60 * minute + 5, pod, "jvm_heap_pct", float(rng.uniform(20, 80)), "worker-1"),
                     (60 * minute + 7, pod, "requests_total", total, "worker-1")]
    rows += [(60 * m, None, "disk_pct", 40 + m / 10, "worker-1") for m in range(90)]
    rows += [(61, "portal-demo-19-2xfkl", "jvm_heap_pct", float("nan"), "worker-1"),
             (62, "nginx", "jvm_heap_pct", 1.0, "worker-1")]
    frame = export(rows)
    frame = pl.concat([frame, frame.head(25)])
    return frame.sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 31)))


def test_the_output_folder_is_complete_and_accounted(rng, write_export, tmp_path):
    frame = dirty_export(rng)
    out = tmp_path / "out"
    report = b.run_build(write_export(frame), out, step="1m", max_fill=2)
    assert accounted(report) and report.rows_read == frame.height
    assert report.exact_duplicates_merged == 25
    assert report.quarantined == {"missing_or_nan_value": 1, "unknown_pod_name": 1}
    assert report.counter_resets == 3  # one per pod
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "pods.parquet", "quarantine.parquet", "report.json", "series.parquet",
        "tables"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == json.loads((out / "report.json").read_text())
    assert manifest["config"]["step"] == "1m" and manifest["versions"]["polars"] == pl.__version__
    assert len(manifest["input"]["sha256"]) == 64
    assert sorted(manifest["outputs"]) == manifest["outputs"]
    assert {"cubrid.parquet", "portal-demo.parquet", "worker-1.parquet"} == {
        p.name for p in (out / "tables").iterdir()}

    pods = pl.read_parquet(out / "pods.parquet")
    assert pods.columns == ["pod", "workload", "node", "first_seen", "last_seen", "n_samples"]
    assert pods.select("pod", "workload").rows() == [
        ("cubrid-0", "cubrid"), ("portal-demo-19-2xfkl", "portal-demo"),
        ("portal-demo-19-q8zrm", "portal-demo")]
    assert pods["first_seen"].to_list() == [T0 + timedelta(seconds=5)] * 3
    assert pods["n_samples"].to_list() == [2 * 85] * 3

    assert_frame_equal(b.build_pods(b.scan_export(tmp_path / "export.parquet")).collect(), pods)

    series = b.load_series(out)
    assert series.select(pl.struct(s.SERIES_ID, s.TS).is_unique().all()).item()
    assert series.equals(series.sort(s.SERIES_ID, s.TS))
    lazy = b.build_series(b.scan_export(tmp_path / "export.parquet"), step="1m", max_fill=2)
    assert_frame_equal(lazy.series.collect(), pl.read_parquet(out / "series.parquet"),
                       check_exact=False, rel_tol=1e-12)


def test_every_output_file_is_byte_identical_across_runs(rng, write_export, tmp_path):
    source = write_export(dirty_export(rng))
    digests = []
    for out in ("a", "a", "b"):
        b.run_build(source, tmp_path / out, step="1m")
        digests.append(digest(tmp_path / out))
    manifest_a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert digests[0] == digests[1] == digests[2], manifest_a["outputs"]


def test_an_interrupted_write_leaves_the_previous_output_intact(rng, write_export, tmp_path, monkeypatch):
    source = write_export(dirty_export(rng))
    out = tmp_path / "out"
    b.run_build(source, out, step="1m")
    before = digest(out)
    written = []
    real = pl.DataFrame.write_parquet

    def write_then_die(self, file, *args, **kwargs):
        written.append(file)
        if len(written) == 4:  # series, quarantine, pods written; dies on the first table
            raise KeyboardInterrupt
        return real(self, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        b.run_build(source, out, step="5m")
    assert digest(out) == before
    assert {p.name for p in tmp_path.iterdir()} == {"export.parquet", "out"}


# --- feature tables ---------------------------------------------------------------------------


def regular_series(rng: np.random.Generator, n: int = 180) -> pl.DataFrame:
    frames = []
    for entity, metrics in (("portal-demo", ("cpu_pct", "jvm_heap_pct")), ("worker-1", ("disk_pct",))):
        for metric in metrics:
            values = rng.uniform(0, 100, n)
            values[40:45] = np.nan
            frames.append(pl.DataFrame({
                s.SERIES_ID: f"{entity}/{metric}", s.ENTITY: entity, s.METRIC: metric,
                s.TS: [T0 + timedelta(minutes=i) for i in range(n)],
                s.VALUE: pl.Series(values).fill_nan(None), s.N_PODS: pl.Series([1] * n, dtype=pl.UInt32),
                s.FILLED: False,
            }))
    return pl.concat(frames).with_columns(pl.col(s.TS).dt.cast_time_unit("us"))


def test_feature_table_has_no_look_ahead(rng):
    series = regular_series(rng)
    cut = T0 + timedelta(minutes=100)
    before = feature_table(series.lazy(), ["15m", "60m"]).collect()
    changed = series.with_columns(
        pl.when(pl.col(s.TS) >= cut).then(pl.col(s.VALUE) * 7 + 3).otherwise(pl.col(s.VALUE)))
    after = feature_table(changed.lazy(), ["15m", "60m"]).collect()
    assert_frame_equal(before.filter(pl.col(s.TS) < cut), after.filter(pl.col(s.TS) < cut))
    assert not before.filter(pl.col(s.TS) >= cut).equals(after.filter(pl.col(s.TS) >= cut))


def test_feature_table_values_by_hand(rng):
    series = regular_series(rng)
    table = feature_table(series.lazy(), ["15m"], entity="portal-demo").collect()
    assert table.columns == [s.ENTITY, s.TS] + [
        f"{m}{suffix}" for m in ("cpu_pct", "jvm_heap_pct")
        for suffix in ("", "__mean_15m", "__std_15m", "__rate_15m")]
    cpu = series.filter(pl.col(s.SERIES_ID) == "portal-demo/cpu_pct")[s.VALUE].to_numpy()
    i = 30
    window = cpu[i - 14: i + 1]
    row = table.row(i, named=True)
    assert row["cpu_pct__mean_15m"] == pytest.approx(window.mean())
    assert row["cpu_pct__std_15m"] == pytest.approx(window.std(ddof=1))
    assert row["cpu_pct__rate_15m"] == pytest.approx((cpu[i] - cpu[i - 15]) / 15)
    at_gap = table.row(42, named=True)  # nulls inside the window are skipped, not zeros
    assert at_gap["cpu_pct"] is None
    assert at_gap["cpu_pct__mean_15m"] == pytest.approx(np.nanmean(cpu[28:43]))


def test_the_job_tables_equal_the_notebook_function(rng):
    series = regular_series(rng)
    tables = entity_tables(series, ["15m", "60m"], "1m")
    assert sorted(tables) == ["portal-demo", "worker-1"]
    for entity, table in tables.items():
        want = feature_table(series.lazy(), ["15m", "60m"], "1m", entity=entity).collect()
        assert_frame_equal(table, want)


# --- the CLI ----------------------------------------------------------------------------------


def cli(args: list[str], env: dict[str, str] | None = None):
    from serving.cli import app

    return CliRunner().invoke(app, ["features", "build", *args], env=env)


def test_cli_config_env_and_options_in_that_order(rng, write_export, tmp_path):
    source = write_export(dirty_export(rng))
    cfg = tmp_path / "c.toml"
    cfg.write_text('[build]\nstep = "5m"\ntables = false\n')
    out = tmp_path / "out"
    result = cli(["--input", str(source), "--out", str(out), "--config", str(cfg), "--quiet"],
                 env={"PREALERT_STEP": "2m"})
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["step"] == "2m"
    assert not (out / "tables").exists()
    result = cli(["--input", str(source), "--out", str(out), "--config", str(cfg), "--step", "1m"],
                 env={"PREALERT_STEP": "2m"})
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["step"] == "1m"
    assert "rows read" in result.output


def test_cli_fails_non_zero_without_writing(tmp_path):
    bad = tmp_path / "export.parquet"
    bad.write_text("this is a CSV export, not parquet at all\n")
    result = cli(["--input", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "not a Parquet file" in result.output
    assert not (tmp_path / "out").exists()


def test_first_read_wins_across_files_at_scale(rng, tmp_path):
    # 60k rows over three files, most keys read two or three times with other values: the kept
    # value of every key is the one read first (file order, then row order), in both code paths
    n = 20_000
    hosts = np.array([f"host-{i}" for i in range(50)])
    parts = []
    for _ in range(3):
        key = rng.integers(0, 4000, n)
        parts.append(pl.DataFrame({
            s.TS: [T0 + timedelta(minutes=int(k // 50)) for k in key],
            s.NODE: hosts[key % 50].tolist(),
            s.METRIC: "cpu_pct",
            s.VALUE: rng.uniform(0, 100, n).round(3),
        }))
    root = tmp_path / "export"
    root.mkdir()
    for i, part in enumerate(parts):
        part.write_parquet(root / f"part-{i}.parquet")
    everything = pl.concat(parts).with_row_index("order")
    first = (everything.group_by(s.NODE, s.TS).agg(pl.col(s.VALUE).sort_by("order").first())
             .sort(s.NODE, s.TS))
    report = b.run_build(root, tmp_path / "out", step="1m", max_fill=0)
    assert report.rows_kept == first.height and accounted(report)
    series = (b.load_series(tmp_path / "out").filter(pl.col(s.N_PODS) > 0)
              .select(pl.col(s.ENTITY).alias(s.NODE), s.TS, s.VALUE).sort(s.NODE, s.TS))
    assert_frame_equal(series, first)
    kept = b.build_series(b.scan_export(root), step="1m").kept.collect()
    assert_frame_equal(kept.select(s.NODE, s.TS, s.VALUE).sort(s.NODE, s.TS), first)


def test_an_export_whose_rows_are_all_quarantined_is_refused(write_export, tmp_path):
    frame = export([(0, "nginx", "cpu_pct", 1.0), (0, "app-0", "cpu_pct", float("nan"))])
    assert b.build_series(frame.lazy(), step="1m").series.collect().is_empty()  # lazy: empty
    with pytest.raises(b.NothingKeptError) as err:  # the job: an error, nothing written
        b.run_build(write_export(frame), tmp_path / "out", step="1m")
    report = err.value.report
    assert report.rows_kept == 0 and report.series == 0 and accounted(report)
    assert not (tmp_path / "out").exists()

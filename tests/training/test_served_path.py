"""What is served is what was measured: a saved-and-loaded bundle answers exactly as the trained one.

Every series of the sample and of the six SMD dev machines, both directions, a spread of
thresholds (inside and outside what the calibration covers), with and without recent
observations: every field of the answer must be equal. Then the same through a real
``bentoml serve``.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from features import schema as s
from features.build import build_series, load_series, run_build, scan_export
from training.bundle import ModelBundle
from training.predict import predict_series
from training.train import TrainConfig, train_bundle

ROOT = Path(__file__).resolve().parents[2]
SMD = ROOT.parent / "shared" / "data" / "smd-dev"
#: quantiles of each series' history that become thresholds, per direction
QUANTILES = {"above": (0.5, 0.9, 0.97, 0.995, 1.0), "below": (0.0, 0.005, 0.03, 0.1, 0.5)}
HORIZONS = (60, 240)


def _train(series: pl.DataFrame, days: float) -> ModelBundle:
    series = series.filter(pl.col(s.TS) >= pl.col(s.TS).max() - timedelta(days=days))
    return train_bundle(series, TrainConfig(holdout_hours=24, n_jobs=2,
                                            forecaster={"min_history_hours": 48})).bundle


@pytest.fixture(scope="module")
def sample_series(tmp_path_factory) -> pl.DataFrame:
    out = tmp_path_factory.mktemp("features")
    run_build(ROOT / "data" / "sample" / "export", out, step="5m")
    return load_series(out)


@pytest.fixture(scope="module")
def sample_bundles(sample_series, tmp_path_factory):
    trained = _train(sample_series, 6)
    folder = trained.save(tmp_path_factory.mktemp("bundle") / "sample")
    return trained, ModelBundle.load(folder), sample_series, folder


@pytest.fixture(scope="module")
def smd_bundles(tmp_path_factory):
    if not SMD.is_dir():
        pytest.skip(f"{SMD} not present")
    frames = [build_series(scan_export(p, {"host": "node"}), step="15m").series.collect()
              for p in sorted(SMD.glob("machine-*.parquet")) if not p.name.endswith(".labels.parquet")]
    series = pl.concat(frames)
    trained = _train(series, 5)
    folder = trained.save(tmp_path_factory.mktemp("bundle") / "smd")
    return trained, ModelBundle.load(folder), series, folder


def _questions(bundle: ModelBundle, series: pl.DataFrame):
    """(series id, threshold, direction, horizon, recent) over every series of the bundle."""
    by_sid = {sid: g.sort(s.TS).drop_nulls(s.VALUE) for (sid,), g in series.group_by(s.SERIES_ID)}
    for sid in sorted(bundle.forecasters):
        g = by_sid[sid]
        values = g[s.VALUE].to_numpy()
        end = bundle.forecasters[sid].last_ts_
        tail = g.filter(pl.col(s.TS) > end - timedelta(minutes=90), pl.col(s.TS) <= end)
        recent = list(tail.select(s.TS, s.VALUE).iter_rows())
        for direction, qs in QUANTILES.items():
            for q in qs:
                threshold = float(np.quantile(values, q))
                for h in HORIZONS:
                    yield sid, threshold, direction, h, recent if q != 0.5 else None


def _assert_same_answers(trained: ModelBundle, loaded: ModelBundle, series: pl.DataFrame) -> int:
    n = 0
    for sid, threshold, direction, h, recent in _questions(trained, series):
        try:
            want = predict_series(trained, sid, threshold, direction, h, recent=recent).as_dict()
        except ValueError as exc:  # e.g. a horizon beyond what the model learned: same refusal
            with pytest.raises(ValueError, match=str(exc)[:40]):
                predict_series(loaded, sid, threshold, direction, h, recent=recent)
            continue
        got = predict_series(loaded, sid, threshold, direction, h, recent=recent).as_dict()
        want.pop("model_version"), got.pop("model_version")
        assert got == want, (sid, threshold, direction, h)
        n += 1
    return n


def _assert_same_parts(trained: ModelBundle, loaded: ModelBundle) -> None:
    """Field by field: forecasters (calibrations, error paths, params), detectors, alert rule."""
    assert loaded.alert_rule == trained.alert_rule
    assert set(loaded.forecasters) == set(trained.forecasters)
    for sid, a in trained.forecasters.items():
        b = loaded.forecasters[sid]
        assert b.get_params() == a.get_params(), sid
        for attr in ("kind_", "fallback_reason_", "sigma_", "n_points_", "step_minutes_"):
            assert getattr(b, attr) == getattr(a, attr), (sid, attr)
        assert b.first_ts_ == a.first_ts_ and b.last_ts_ == a.last_ts_, sid
        assert b.error_paths_.dtype == a.error_paths_.dtype, sid
        np.testing.assert_array_equal(b.error_paths_, a.error_paths_, err_msg=sid)
        assert b.calibrations_ == a.calibrations_, sid
        grid = np.arange(np.datetime64(a.last_ts_.replace(tzinfo=None), "us"),
                         np.datetime64(a.last_ts_.replace(tzinfo=None), "us") + np.timedelta64(6, "h"),
                         np.timedelta64(5, "m"))
        np.testing.assert_array_equal(b.expected(grid), a.expected(grid), err_msg=sid)
    assert set(loaded.detectors) == set(trained.detectors)
    for entity, a in trained.detectors.items():
        b = loaded.detectors[entity]
        assert b.metrics_ == a.metrics_ and b.columns_ == a.columns_
        np.testing.assert_array_equal(b.fill_, a.fill_)
        np.testing.assert_array_equal(b.train_quantiles_, a.train_quantiles_)
        probe = np.random.default_rng(0).normal(0, 3, size=(50, len(a.columns_)))
        np.testing.assert_array_equal(b.score(probe), a.score(probe))


@pytest.mark.slow
@pytest.mark.parametrize("which, n_series", [("sample_bundles", 21), ("smd_bundles", 228)])
def test_bundle_round_trips_field_by_field_and_answer_by_answer(request, which, n_series):
    trained, loaded, series, _ = request.getfixturevalue(which)
    assert len(trained.forecasters) == n_series
    assert any(fc.calibrations_ for fc in trained.forecasters.values())
    _assert_same_parts(trained, loaded)
    n = _assert_same_answers(trained, loaded, series)
    assert n >= n_series * 2 * 5 * len(HORIZONS) * 0.9


@pytest.mark.slow
def test_the_service_answers_as_the_trained_model(sample_bundles):
    """A real ``bentoml serve`` on the saved bundle: every APDEX and heap series, both directions."""
    from serving.server import free_port, start_service, stop_service, wait_ready

    trained, _, series, folder = sample_bundles
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_service(port, bundle=folder)
    try:
        wait_ready(proc, url)
        asked = 0
        for sid, threshold, direction, h, recent in _questions(trained, series):
            if not sid.endswith(("/apdex", "/jvm_heap_pct")):
                continue
            body = {"series_id": sid, "threshold": threshold, "direction": direction,
                    "horizon_minutes": h,
                    "recent": [{"ts": t.isoformat(), "value": v} for t, v in recent or []]}
            r = httpx.post(f"{url}/predict", json=body, timeout=30)
            assert r.status_code == 200, (body, r.text)
            want = json.loads(json.dumps(predict_series(trained, sid, threshold, direction, h,
                                                        recent=recent).as_dict(), default=str))
            got = r.json()
            for key in ("minutes_to_threshold", "earliest_minutes", "latest_minutes",
                        "probability", "alert", "alarm_probability", "alert_rule", "already_crossed",
                        "anomaly_score", "level_correction", "trend_correction_per_min", "driver"):
                assert got[key] == want[key] or (
                    isinstance(want[key], float) and math.isclose(got[key], want[key])), (sid, key)
            assert [d["component"] for d in got["drivers"]] == [d["component"] for d in want["drivers"]]
            asked += 1
        assert asked >= 40
    finally:
        stop_service(proc)

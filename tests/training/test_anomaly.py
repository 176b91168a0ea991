"""The anomaly detector: numpy trees equal scikit-learn, persistence, explanations, causal scoring."""

from __future__ import annotations

import json
import time

import joblib
import numpy as np
import polars as pl
import pytest
import sklearn
from sklearn.ensemble import IsolationForest
from typer.testing import CliRunner

from training.anomaly.detector import WorkloadAnomalyDetector
from training.anomaly.flat_forest import FlatForest
from training.anomaly.metrics import best_f1, point_adjust, precision_at_top, prf
from training.anomaly.stream import StreamConfig, score_causally, score_table
from training.anomaly.tail import bounded

METRICS = ["cpu_pct", "mem_pct", "error_rate_pct", "response_time_ms"]


def _daily_frame(rng: np.random.Generator, n: int = 4000) -> np.ndarray:
    """Four correlated minute series with a daily cycle and noise."""
    t = np.arange(n)
    load = 1 + 0.5 * np.sin(2 * np.pi * t / 1440)
    return np.column_stack([
        40 * load + rng.normal(0, 2, n),
        60 + 5 * load + rng.normal(0, 1, n),
        0.5 + rng.normal(0, 0.1, n),
        300 * load + rng.normal(0, 15, n),
    ])


@pytest.mark.parametrize("kw", [{}, {"max_features": 0.5}, {"max_samples": 600}])
def test_numpy_trees_equal_sklearn_score_samples(rng, kw):
    x = rng.normal(size=(2000, 7))
    forest = IsolationForest(n_estimators=60, random_state=3, **kw).fit(x)
    probe = np.vstack([rng.normal(size=(500, 7)) * 3, x[:50]])
    probe[::9, 2] = np.nan  # scikit-learn routes NaN by each node's missing_go_to_left
    flat = FlatForest.from_sklearn(forest)
    np.testing.assert_allclose(flat.score_samples(probe), forest.score_samples(probe), rtol=0, atol=1e-12)
    np.testing.assert_allclose(flat.score_samples(probe[3]), forest.score_samples(probe[3:4]), atol=1e-12)
    # without NaN a block walks the complete-tree layout (no child lookups): the same scores
    clean = np.vstack([rng.normal(size=(3000, 7)) * 3, x[:50], np.full((1, 7), 1e6)])
    assert flat.heap() is not None
    np.testing.assert_allclose(flat.score_samples(clean), forest.score_samples(clean), rtol=0, atol=1e-12)
    np.testing.assert_allclose(flat.score_samples(clean[:1]), forest.score_samples(clean[:1]), atol=1e-12)


def test_detector_score_is_the_bounded_tail_surprise_of_the_sklearn_score(rng):
    z = rng.normal(size=(1500, 4))
    det = WorkloadAnomalyDetector(n_estimators=50).fit(z, METRICS)
    probe = rng.normal(size=(300, 4)) * 2
    expected = bounded(det.tail_.surprise(-det.forest_.score_samples(probe)))
    np.testing.assert_allclose(det.score(probe), expected, rtol=0, atol=1e-12)
    assert det.score(np.zeros(4)).shape == (1,)
    assert det.score(probe).min() >= 0 and det.score(probe).max() < 1
    far = det.score(np.full(4, 50.0))[0]
    assert 0.75 < far < 1  # far outside training: rarer than once in 1,000 minutes, yet no ceiling


def test_single_row_scores_in_under_a_millisecond(rng):
    det = WorkloadAnomalyDetector().fit(rng.normal(size=(5000, 10)), [f"m{i}" for i in range(10)])
    row = rng.normal(size=10)
    det.score(row)
    best = min(_timed(lambda: det.score(row)) for _ in range(30))
    assert best < 1e-3, f"single-row score took {best * 1e3:.2f} ms"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_save_writes_npz_without_pickle_and_round_trips(rng, tmp_path):
    z = rng.normal(size=(800, 4))
    det = WorkloadAnomalyDetector(n_estimators=40).fit(z, METRICS)
    det.save(tmp_path / "det")
    assert (tmp_path / "det" / "forest.npz").is_file()
    assert not list((tmp_path / "det").glob("*.joblib"))
    back = WorkloadAnomalyDetector.load(tmp_path / "det")
    probe = rng.normal(size=(200, 4)) * 2
    np.testing.assert_array_equal(back.score(probe), det.score(probe))
    assert back.explain(probe[0]) == det.explain(probe[0])
    assert back.metrics_ == METRICS and back.n_estimators == 40


def test_a_pickled_detector_is_refused_and_never_unpickled(rng, tmp_path):
    """A folder claiming the old joblib format must not be unpickled: a pickle can run code."""
    old = tmp_path / "old"
    old.mkdir()
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    joblib.dump(Planted(), old / "forest.joblib")
    (old / "detector.json").write_text(json.dumps({
        "metrics": METRICS, "sklearn_version": sklearn.__version__,
        "params": {"n_estimators": 40, "max_samples": 256, "random_state": 0}}))
    with pytest.raises(ValueError, match="pickled forest"):
        WorkloadAnomalyDetector.load(old)
    assert not marker.exists()


def test_explanation_names_the_metric_that_moved(rng):
    z = rng.normal(size=(3000, 4))
    det = WorkloadAnomalyDetector().fit(z, METRICS)
    row = np.array([0.3, -0.2, 7.5, 0.4])
    top = det.explain(row, top=2)
    assert top[0]["metric"] == "error_rate_pct" and top[0]["z"] == 7.5
    assert top[0]["contribution"] > 0 and top[0]["contribution"] >= top[1]["contribution"]
    quiet = det.explain(np.array([0.0, 0.0, 0.0, -0.1]), top=1)  # nothing stands out: largest |z|
    assert quiet[0]["metric"] == "response_time_ms"


def test_no_look_ahead_a_later_spike_leaves_earlier_scores_unchanged(rng):
    values = _daily_frame(rng, 3000)
    config = StreamConfig(retrain_every_minutes=500, detector={"n_estimators": 50})
    t = 2200
    spiked = values.copy()
    spiked[t:t + 5, 0] += 60  # CPU jumps for five minutes
    res = score_causally(values, METRICS, 1440, config)
    res2 = score_causally(spiked, METRICS, 1440, config)
    np.testing.assert_array_equal(res2.surprise[:t], res.surprise[:t])
    assert res.refits == [1440, 1940, 2440, 2940]
    assert res.training[:1440].all() and not res.training[1440:].any()
    assert not np.isnan(res.surprise).any()  # training rows are scored too (in-sample)
    assert res2.surprise[t] >= 3 and res2.top[t][0]["metric"] == "cpu_pct"


def test_score_table_one_series_and_the_cli(rng, tmp_path):
    n = 3000
    ts = pl.datetime_range(pl.datetime(2026, 9, 1), pl.datetime(2026, 9, 1) + pl.duration(minutes=n - 1),
                           "1m", eager=True)
    values = 50 + 10 * np.sin(np.arange(n) * 2 * np.pi / 1440) + rng.normal(0, 1, n)
    values[2500] += 40
    text = ts.dt.to_string("%Y-%m-%dT%H:%M:%S+09:00")  # times come back exactly as written
    pl.DataFrame({"timestamp": text, "value": values}).write_csv(tmp_path / "one.csv")

    import typer

    from serving.cli.anomaly import evaluate_anomalies, score_anomalies

    app = typer.Typer()
    app.command("score-anomalies")(score_anomalies)
    app.command("evaluate-anomalies")(evaluate_anomalies)
    res = CliRunner().invoke(app, ["score-anomalies", "--input", str(tmp_path / "one.csv"),
                                   "--out", str(tmp_path / "s.csv"), "--train-duration", "1d"])
    assert res.exit_code == 0, res.output
    out = pl.read_csv(tmp_path / "s.csv", infer_schema_length=None)
    assert out.columns == ["timestamp", "value", "anomaly_score", "tail_probability", "forest_score",
                           "residual_score", "onset_score", "training"] and out.height == n
    assert out["timestamp"].to_list() == text.to_list()
    assert out["training"].sum() == 1440 and out["anomaly_score"].null_count() == 0
    np.testing.assert_allclose(out["tail_probability"], 10 ** -out["anomaly_score"], rtol=1e-12)
    assert out["anomaly_score"][2500] >= 6 and out["anomaly_score"].arg_max() == 2500
    assert out["onset_score"][2500] >= 6 and out["onset_score"].arg_max() == 2500
    bad = CliRunner().invoke(app, ["score-anomalies", "--input", str(tmp_path / "nope.csv")])
    assert bad.exit_code == 2 and "no such file" in bad.output
    both = CliRunner().invoke(app, ["score-anomalies", "--input", str(tmp_path / "one.csv"),
                                    "--train-rows", "100", "--train-fraction", "0.3"])
    assert both.exit_code == 2 and "give one of" in both.output


def test_score_table_long_multi_host(rng):
    n = 2000
    ts = pl.datetime_range(pl.datetime(2026, 9, 1), pl.datetime(2026, 9, 1) + pl.duration(minutes=n - 1),
                           "1m", eager=True)
    frames = []
    for host in ("a", "b"):
        vals = _daily_frame(rng, n)
        if host == "b":
            vals[1800:1810, 3] += 400
        for j, m in enumerate(METRICS):
            frames.append(pl.DataFrame({"ts": ts, "host": host, "metric": m, "value": vals[:, j]}))
    frame = pl.concat(frames)
    scored, report = score_table(frame, train_fraction=0.6,
                                 config=StreamConfig(detector={"n_estimators": 50}))
    assert scored.height == frame.height and scored.select(frame.columns).equals(frame)  # rows as read
    assert scored.columns == frame.columns + ["anomaly_score", "tail_probability", "forest_score",
                                              "residual_score", "onset_score", "training", "top_metrics"]
    assert report.training_rows == 2 * 1200
    row = scored.filter((pl.col("host") == "b") & (pl.col("metric") == "response_time_ms"))[1800]
    assert row["anomaly_score"][0] >= 6 and row["top_metrics"][0].startswith("response_time_ms:+")
    other = scored.filter((pl.col("host") == "b") & (pl.col("metric") == "cpu_pct"))[1800]
    assert other["anomaly_score"][0] == row["anomaly_score"][0]  # one score per host and minute
    assert other["residual_score"][0] < row["residual_score"][0]  # each metric's own residual part


def test_point_adjust_and_f1():
    labels = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    pred = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    adj = point_adjust(pred, labels)
    assert adj.tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    p, r, f1 = prf(adj, labels)
    assert (p, r) == (0.75, 0.6) and f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert precision_at_top(np.arange(10.0), labels, 0.2) == 0.0


@pytest.mark.parametrize("adjusted", [False, True])
def test_best_f1_matches_brute_force(rng, adjusted):
    labels = (rng.random(400) < 0.1).astype(int)
    labels[100:130] = 1
    scores = rng.random(400) + labels * rng.random(400) * 0.5
    brute = 0.0
    for thr in np.unique(scores):
        pred = scores >= thr
        brute = max(brute, prf(point_adjust(pred, labels) if adjusted else pred, labels)[2])
    assert best_f1(scores, labels, adjusted)[0] == pytest.approx(brute, abs=1e-12)

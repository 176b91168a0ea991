"""Score meaning (no saturation, ties unremarkable), time-aware windows, duplicates, drift, batch, windows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from training.anomaly.features import CausalFeatures
from training.anomaly.metrics import PROFILES, WindowSeries, anomaly_windows, scaled_sigmoid, window_score
from training.anomaly.stream import EntityModel, StreamConfig, onset_scores, score_table
from training.anomaly.tail import TailModel

FAST = StreamConfig(detector={"n_estimators": 40})


def _minutes(n: int, step: str = "1m") -> pl.Series:
    start = pl.datetime(2026, 9, 1)
    return pl.datetime_range(start, start + pl.duration(minutes=(n - 1) * int(step[:-1])), step, eager=True)


def _one(values: np.ndarray, step: str = "1m") -> pl.DataFrame:
    return pl.DataFrame({"timestamp": _minutes(len(values), step), "value": values})


# --- the score's meaning ---------------------------------------------------------------------------
def test_tail_surprise_keeps_growing_beyond_the_training_extremes(rng):
    tail = TailModel.fit(rng.normal(size=20_000), 0.1)
    s = tail.surprise(np.array([0.0, 2.0, 4.5, 6.0, 10.0, 100.0, 1e4]))
    assert np.all(np.diff(s) > 0) and np.isfinite(s).all()
    assert s[0] == pytest.approx(np.log10(2), abs=0.02)  # the median: once every 2 rows
    assert s[1] == pytest.approx(-np.log10(0.0228), abs=0.1)  # P(Z >= 2) = 0.0228


def test_ties_and_constants_are_unremarkable_and_a_constant_that_moves_is_not(rng):
    const = TailModel.fit(np.full(5000, 3.0), 0.1)
    assert const.surprise(np.array([3.0, 2.0]))[0] == 0 and const.surprise(np.array([3.0001]))[0] > 3
    rounded = TailModel.fit(np.round(np.abs(rng.normal(0, 1, 5000))), 0.1)
    assert rounded.surprise(np.array([1.0]))[0] < 0.5  # a common rounded level ties with many rows


def test_a_constant_series_scores_zero_until_it_moves():
    values = np.full(3000, 7.0)
    values[2500:] = 7.5  # a step that persists
    out, report = score_table(_one(values), train_rows=1000, config=FAST)
    s = out["anomaly_score"].to_numpy()
    assert (s[:2500] == 0).all()
    assert s[2500] >= 6
    assert (s[2600:] < 1).all()  # the persisting level stopped being anomalous
    assert any("constant" in w for w in report.warnings)


def test_a_rounded_noisy_series_gives_no_run_of_top_scores(rng):
    values = np.round(50 + 3 * rng.normal(size=6000))
    s = score_table(_one(values), train_rows=2000, config=FAST)[0]["anomaly_score"].to_numpy()[2000:]
    assert np.mean(s >= 3) < 0.01  # about as often as "once in 1,000" promises
    assert np.sum(s >= s.max() - 1e-9) <= 2  # no plateau of equal top scores
    assert np.mean(s == 0) < 0.5


# --- time ---------------------------------------------------------------------------------------------
def test_windows_are_durations_on_the_clock(rng):
    values = rng.normal(size=(400, 1))
    ts = (np.arange(400) * 5 * 60e9).astype(np.int64)  # every 5 minutes
    cf = CausalFeatures(60, 10, ("z",), adaptive_scale=False).fit(values, ["v"], ts)
    z = cf.transform(values, ts)[:, 0] * cf.scale_[0]
    t = 200
    assert z[t] == pytest.approx(values[t, 0] - np.median(values[t - 12:t, 0]))  # 60 min = 12 rows


def test_the_expectation_is_the_nearer_of_the_recent_and_the_usual_median_by_hand(rng):
    values = rng.normal(size=(600, 1))
    values[300:390, 0] += 10  # an event of 90 minutes, then back to the usual level
    cf = CausalFeatures(60, 10, ("z",), adaptive_scale=False, baseline_minutes=240).fit(values, ["v"])
    z = cf.transform(values)[:, 0] * cf.scale_[0]
    for t in (250, 330, 395, 450):
        recent, usual = np.median(values[t - 60:t, 0]), np.median(values[t - 240:t, 0])
        nearer = usual if abs(values[t, 0] - usual) < abs(values[t, 0] - recent) else recent
        assert z[t] == pytest.approx(values[t, 0] - nearer)


def test_a_return_to_the_usual_level_is_no_departure_and_a_shift_still_becomes_normal(rng):
    values = 20 + rng.normal(0, 1, 4000)
    values[3000:3090] += 12  # 90 minutes away, then back
    values[3600:] += 12  # a shift that persists
    recent_only = replace(FAST, baseline_minutes=None)
    z_recent, z_both = (np.abs(EntityModel.fit(values[:2000, None], ["v"], c).features.transform(
        values[:, None])[:, 0]) for c in (recent_only, FAST))
    back = slice(3090, 3120)  # the recent median still holds the event: a departure for it alone
    assert np.median(z_recent[back]) > 5 and np.median(z_both[back]) < 2
    assert z_both[3000] > 8 and z_both[3600] > 8  # both events still start as departures
    assert np.median(z_both[3700:3800]) < 2  # the persisting level became normal within the hour


def test_gaps_irregular_sampling_and_short_windows_are_reported(rng):
    n = 2000
    ts = _minutes(n)
    keep = np.ones(n, dtype=bool)
    keep[500:700] = keep[1500:1530] = False  # two gaps
    frame = pl.DataFrame({"timestamp": ts, "value": rng.normal(size=n)}).filter(pl.Series(keep))
    warnings = score_table(frame, train_rows=400, config=FAST)[1].warnings
    assert any("2 gaps" in w for w in warnings)
    hourly = _one(rng.normal(size=300), "60m")
    warnings = score_table(hourly, train_rows=100, config=StreamConfig(
        expectation_minutes=60, detector={"n_estimators": 40}))[1].warnings
    assert any("expectation window" in w for w in warnings)
    # the default windows follow the sampling interval: no warning on hourly data
    assert not any("window" in w for w in score_table(hourly, train_rows=100, config=FAST)[1].warnings)


def test_duplicate_timestamps_are_averaged_deterministically_and_reported(rng):
    n = 1500
    frame = _one(50 + rng.normal(size=n))
    dst = frame[600:660].with_columns(pl.col("value") + 0.5)  # a repeated hour, interleaved
    frame = pl.concat([frame[:660], dst, frame[660:]])
    out, report = score_table(frame, train_rows=400, config=FAST)
    assert report.duplicate_times == 60 and any("share a timestamp" in w for w in report.warnings)
    assert out.select("timestamp", "value").equals(frame)  # every row, in input order
    assert out["anomaly_score"][600] == out["anomaly_score"][660]  # both copies get that time's score
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=3)
    again, _ = score_table(shuffled, train_rows=400, config=FAST)
    by_time = out.group_by("timestamp").agg(pl.col("anomaly_score").first()).sort("timestamp")
    by_time2 = again.group_by("timestamp").agg(pl.col("anomaly_score").first()).sort("timestamp")
    np.testing.assert_allclose(by_time["anomaly_score"], by_time2["anomaly_score"], rtol=0, atol=1e-9)


def test_train_rows_and_train_until_choose_the_training_part(rng):
    frame = _one(rng.normal(size=1000))
    assert score_table(frame, train_rows=300, config=FAST)[0]["training"].sum() == 300
    until = frame["timestamp"][450]
    assert score_table(frame, train_until=until, config=FAST)[0]["training"].sum() == 450
    with pytest.raises(ValueError, match="at least 10"):
        score_table(frame, train_rows=5, config=FAST)


# --- streaming ------------------------------------------------------------------------------------------
def test_the_normal_range_follows_a_slow_drift(rng):
    n = 6000
    values = 100 + 0.05 * np.arange(n) + rng.normal(0, 1, n)  # ends 300 sds above the training range
    s = score_table(_one(values), train_rows=1000, config=FAST)[0]["anomaly_score"].to_numpy()
    assert np.median(s[1000:]) < 1 and np.mean(s[1000:] >= 3) < 0.01


def test_a_persisting_level_shift_fades(rng):
    values = 20 + rng.normal(0, 1, 4000)
    values[3000:] += 15
    s = score_table(_one(values), train_rows=1000, config=FAST)[0]["anomaly_score"].to_numpy()
    assert s[3000] >= 6
    assert np.median(s[3100:]) < 1  # an hour and a half later the new level is normal



def test_onset_is_the_surprise_beyond_the_previous_windows_largest_by_hand():
    ts = np.arange(10, dtype=np.int64) * 60_000_000_000
    s = np.array([1, 3, 2, 5, 5, 0, 0, 0, 0, 4.0])
    # row t sees the rows in [t - 3 min, t): the first keeps its surprise, a repeat scores 0
    np.testing.assert_allclose(onset_scores(s, ts, 3), [1, 2, 0, 2, 0, 0, 0, 0, 0, 4])
    # a window in time, not rows: on a 2-minute clock 4 minutes hold two rows, 3 minutes one
    np.testing.assert_allclose(onset_scores(s, ts * 2, 4), [1, 2, 0, 2, 0, 0, 0, 0, 0, 4])
    np.testing.assert_allclose(onset_scores(s, ts * 2, 3), [1, 2, 0, 3, 0, 0, 0, 0, 0, 4])
    later = s.copy()
    later[7:] = 9.0  # causal: what comes later changes nothing before it
    np.testing.assert_array_equal(onset_scores(later, ts, 3)[:7], onset_scores(s, ts, 3)[:7])


def test_the_onset_window_holds_at_least_the_given_rows_by_hand():
    hours = np.arange(10, dtype=np.int64) * 3_600_000_000_000
    s = np.array([5, 1, 1, 1, 1, 1, 4.0, 1, 1, 6])
    # on an hourly clock a 4-hour window holds 4 rows: the 4 at row 6 is a new onset
    np.testing.assert_allclose(onset_scores(s, hours, 240), [5, 0, 0, 0, 0, 0, 3, 0, 0, 2])
    # at least 8 rows: row 6 still sees the 5 at row 0, row 9 sees rows 1..8
    np.testing.assert_allclose(onset_scores(s, hours, 240, rows=8), [5, 0, 0, 0, 0, 0, 0, 0, 0, 2])
    # where the duration holds more rows than the floor, the floor changes nothing
    minutes = hours // 60
    np.testing.assert_array_equal(onset_scores(s, minutes, 240, rows=3), onset_scores(s, minutes, 240))
    with pytest.raises(ValueError, match="rows >= 0"):
        onset_scores(s, hours, 240, rows=-1)


def test_hourly_data_gets_a_onset_window_of_rows_not_four_hours(rng):
    # two weeks of hourly data with a daily peak: a 4-hour window calls every daily peak an onset,
    # the 48-row floor (two days) has seen yesterday's
    n = 24 * 28
    hour = np.arange(n) % 24
    values = 50 + 30 * np.exp(-0.5 * ((hour - 14) / 1.5) ** 2) + rng.normal(0, 1, n)
    values[500] += 40  # one real incident
    frame = _one(values, "60m")
    four_hours = score_table(frame, train_rows=24 * 14, config=replace(FAST, onset_rows=0))[0]
    floored = score_table(frame, train_rows=24 * 14, config=FAST)[0]
    assert FAST.onset_rows == 48 and FAST.onset_minutes == 240
    late = slice(24 * 14, n)
    on4, on48 = (f["onset_score"].to_numpy()[late] for f in (four_hours, floored))
    incident = 500 - 24 * 14
    assert np.argmax(on48) == incident and on48[incident] >= 1
    # the floor removes the daily "onsets" that the bare 4-hour window reports
    others4, others48 = ((np.delete(o, incident) >= 0.5).sum() for o in (on4, on48))
    assert others4 >= 8 and others48 <= 3


def test_an_event_that_lasts_scores_an_onset_at_its_start_only(rng):
    values = 20 + rng.normal(0, 1, 4000)
    values[3000:3300] += 15  # five hours at a new level, then back
    out = score_table(_one(values), train_rows=1000, config=FAST)[0]
    onset, s = out["onset_score"].to_numpy(), out["anomaly_score"].to_numpy()
    assert onset[3000] >= 3 and onset[3000] == pytest.approx(s[3000] - s[2760:3000].max())
    assert (onset[3001:3300] >= 1).sum() <= 1  # the rest of the event is no new onset
    assert (onset[1000:3000] >= 1).sum() <= 2  # and noise rarely is


def test_the_score_is_the_surprise_of_the_larger_part_with_one_residual_tail_per_entity(rng):
    values = rng.normal(size=(3000, 4)) * np.array([1.0, 5.0, 0.2, 1.0])
    model = EntityModel.fit(values, ["a", "b", "c", "d"], FAST)
    feats = model.features.transform(values)
    s, parts = model.score(feats)
    np.testing.assert_allclose(s, model.total_tail_.surprise(np.maximum(parts["forest"], parts["residual"])))
    # one tail for every metric: the residual part is that of the largest |z|, whichever metric
    assert len(model.residual_tails_) == 1
    np.testing.assert_allclose(parts["residual"], parts["residual_each"].max(axis=1))
    zmax = np.abs(np.nan_to_num(feats[:, :4])).max(axis=1)
    np.testing.assert_allclose(parts["residual"], model.residual_tails_[0].surprise(zmax))
    per_metric = EntityModel.fit(values, ["a", "b", "c", "d"], StreamConfig(
        detector={"n_estimators": 40}, residual_calibration="metric", combination="sum"))
    assert len(per_metric.residual_tails_) == 4
    s2, p2 = per_metric.score(feats)
    np.testing.assert_allclose(s2, per_metric.total_tail_.surprise(p2["forest"] + p2["residual"]))


# --- batch ------------------------------------------------------------------------------------------------
def test_a_folder_is_scored_in_one_call_and_a_bad_file_does_not_sink_the_batch(rng, tmp_path):
    from serving.cli.anomaly import score_anomalies

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        _one(rng.normal(size=600)).write_csv(src / f"m{i}.csv")
    pl.DataFrame({"timestamp": ["x"], "value": [1.0]}).write_csv(src / "broken.csv")
    app = typer.Typer()
    app.command()(score_anomalies)
    res = CliRunner().invoke(app, ["--input", str(src), "--out", str(tmp_path / "out"),
                                   "--train-rows", "200"])
    assert res.exit_code == 1 and "1 of 4 files failed" in res.output
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["m0.scores.csv", "m1.scores.csv", "m2.scores.csv"]
    glob = CliRunner().invoke(app, ["--input", str(src / "m*.csv"), "--out", str(tmp_path / "g")])
    assert glob.exit_code == 0 and len(list((tmp_path / "g").iterdir())) == 3


# --- early-detection window scoring --------------------------------------------------------------------
def _labels(n: int, *spans: tuple[int, int]) -> np.ndarray:
    lab = np.zeros(n, dtype=int)
    for a, b in spans:
        lab[a:b] = 1
    return lab


def test_windows_are_ten_percent_centred_merged_and_after_probation():
    lab = _labels(10_000, (5000, 5010), (8000, 8005))
    np.testing.assert_array_equal(anomaly_windows(lab), [[4754, 5254], [7752, 8251]])
    close = _labels(10_000, (5000, 5010), (5100, 5110))
    assert len(anomaly_windows(close)) == 1  # overlapping windows merge
    early = _labels(10_000, (100, 110), (5000, 5010))
    assert anomaly_windows(early).tolist() == [[4754, 5254]]  # a window inside probation is dropped


def test_window_score_rewards_and_costs_by_hand():
    n = 10_000
    lab = _labels(n, (5000, 5010))  # one window: rows 4505..5504 (width 1000)
    lo, hi = anomaly_windows(lab)[0]
    scores = np.zeros(n)
    mid = (lo + hi) // 2
    scores[mid] = 1.0
    scores[hi + 500] = 1.0  # half a window width after it
    scores[800] = 1.0  # before any window (after the 750-row probation)
    scores[10] = 5.0  # inside probation: ignored
    tp, missed, fp = WindowSeries(scores, lab).parts(np.array([1.0]))
    y = (mid - hi) / (hi - lo)
    assert tp[0] == pytest.approx(scaled_sigmoid(y) / scaled_sigmoid(-1.0)) and missed[0] == 0
    assert fp[0] == pytest.approx(scaled_sigmoid(500 / (hi - lo + 1)) - 1.0)
    result = window_score([WindowSeries(scores, lab)])
    a_tp, a_fn, a_fp = PROFILES["low_fp"]
    raw = a_tp * tp[0] + a_fp * fp[0]
    assert result["low_fp"]["score"] == pytest.approx(100 * (raw + a_fn) / (a_tp + a_fn))


def test_null_is_zero_and_perfect_is_a_hundred_in_every_profile(rng):
    lab = _labels(20_000, (6000, 6040), (15_000, 15_100))
    perfect = np.zeros(20_000)
    perfect[anomaly_windows(lab)[:, 0]] = 1.0
    for name, s in (("perfect", perfect), ("null", np.zeros(20_000))):
        got = window_score([WindowSeries(s, lab)])
        want = 100.0 if name == "perfect" else 0.0
        assert all(got[p]["score"] == pytest.approx(want) for p in PROFILES)
    noise = window_score([WindowSeries(rng.random(20_000), lab)])
    assert all(0 <= noise[p]["score"] < 100 for p in PROFILES)

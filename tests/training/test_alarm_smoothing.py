"""Alarm levels smoothed across retrains: the rule, the replay's use of it, and the retrain's."""

import dataclasses
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from features import schema as s
from serving.cli import app
from training.bundle import ModelBundle, StoredForecasters
from training.evaluation.gate import GateConfig
from training.evaluation.replay import ReplayOutcome, calibrate_on_replay
from training.evaluation.report import alarm_level_changes
from training.predict import predict_series
from training.registry import champion_version, load_version, log_and_register, set_champion
from training.retrain import RetrainConfig, retrain
from training.threshold import (
    PRIOR_ALARM_OUTCOMES,
    PRIOR_POOL_OUTCOMES,
    TIMING_LEVELS,
    AlertRule,
    PooledAlarm,
    ProbabilityCalibration,
    TimingEvidence,
    metric_kind,
    shrunk_toward_pools,
    smoothed_alarm,
)
from training.train import TrainConfig, train_bundle


def chosen(alarm: float, outcomes: float, for_minutes: float | None = 10.0) -> ProbabilityCalibration:
    return ProbabilityCalibration(alarm=alarm, alarm_outcomes=outcomes, for_minutes=for_minutes)


def test_the_new_level_weighs_by_its_evidence_against_the_previous_one():
    previous = chosen(0.8, 30.0, 0.0)
    few = smoothed_alarm(chosen(0.2, 2.0), previous)
    many = smoothed_alarm(chosen(0.2, 200.0), previous)
    assert few.alarm == pytest.approx((2 * 0.2 + PRIOR_ALARM_OUTCOMES * 0.8) / 12, abs=1e-4)
    assert many.alarm == pytest.approx((200 * 0.2 + PRIOR_ALARM_OUTCOMES * 0.8) / 210, abs=1e-4)
    assert 0.2 < many.alarm < few.alarm < 0.8
    assert few.alarm_chosen == many.alarm_chosen == 0.2 and few.for_minutes == 10.0
    # a replay that could choose nothing keeps the previous level and its `for`
    none = smoothed_alarm(chosen(0.5, 0.0, None), previous)
    assert (none.alarm, none.for_minutes, none.alarm_chosen) == (0.8, 0.0, 0.5)
    # nothing to shrink toward: no previous model, or one that chose nothing either
    assert smoothed_alarm(chosen(0.2, 2.0), None).alarm == 0.2
    assert smoothed_alarm(chosen(0.2, 2.0), ProbabilityCalibration()).alarm == 0.2
    # the smoothed level carries its history: shrinking toward it again works
    assert smoothed_alarm(chosen(0.5, 0.0, None), none).alarm == 0.8


def test_the_evidence_and_the_choice_survive_a_round_trip():
    c = smoothed_alarm(chosen(0.2, 2.0), chosen(0.8, 30.0, 0.0))
    back = ProbabilityCalibration.from_dict(c.to_dict())
    assert back == c and back.alarm_chosen == 0.2 and back.alarm_outcomes == 2.0
    old = {k: v for k, v in c.to_dict().items() if k not in ("alarm_chosen", "alarm_outcomes")}
    assert ProbabilityCalibration.from_dict(old).alarm_chosen is None  # bundles written before


def replay_with_crossings(n_crossings: int, seed: int = 0) -> ReplayOutcome:
    """Checks every 5 min, H = 60 (12 checks per outcome): a probability rising to each crossing."""
    rng = np.random.default_rng(seed)
    n = 2000
    p = np.clip(rng.normal(0.05, 0.03, n), 0, 1)
    crossed = np.zeros(n, dtype=bool)
    for c in np.linspace(100, n - 20, n_crossings).astype(int):
        crossed[c - 12:c] = True
        p[c - 12:c] = np.linspace(0.3, 0.9, 12)
    return ReplayOutcome(p, crossed, np.zeros(n, dtype=bool))


def test_calibrate_on_replay_shrinks_toward_the_previous_model_by_the_crossings_seen():
    rule = AlertRule()
    previous = chosen(0.9, 40.0, 20.0)
    for n_crossings in (3, 30):
        outcome = replay_with_crossings(n_crossings)
        alone = calibrate_on_replay([outcome], 0.5, rule=rule, checks_per_outcome=12)
        shrunk = calibrate_on_replay([outcome], 0.5, rule=rule, checks_per_outcome=12,
                                     previous=previous)
        assert alone.alarm_outcomes == pytest.approx(n_crossings)
        assert alone.alarm_chosen is None and shrunk.alarm_chosen == alone.alarm
        w = n_crossings / (n_crossings + PRIOR_ALARM_OUTCOMES)
        assert shrunk.alarm == pytest.approx(w * alone.alarm + (1 - w) * 0.9, abs=1e-4)
        assert shrunk.alarm_previous == 0.9 and shrunk.own_choice() == alone
    # too few crossings to choose a level: the previous one stands
    quiet = calibrate_on_replay([replay_with_crossings(0)], 0.5, rule=rule, checks_per_outcome=12,
                                previous=previous)
    assert (quiet.alarm, quiet.for_minutes) == (0.9, 20.0)


def test_level_changes_are_reported_per_source_and_horizon():
    t = np.datetime64("2026-10-01T00:00", "us")
    day = np.timedelta64(1, "D")
    frame = pl.DataFrame({
        "predictor": "prealert", "series": "a", "horizon": 60,
        "retrained_at": np.array([t, t, t + day, t + 2 * day]),
        "alarm_probability": [0.5, 0.5, 0.6, 0.62], "alarm_chosen": [0.5, 0.5, 0.9, 0.3]})
    out = alarm_level_changes({"sample": frame}).row(0, named=True)
    assert out["retrain_pairs"] == 2
    assert out["served_change_median"] == pytest.approx(0.06)
    assert out["chosen_change_median"] == pytest.approx(0.5)
    assert out["served_changes_ge_0.3"] == 0 and out["chosen_changes_ge_0.3"] == 2


# --- the scheduled retrain reads the champion's levels ------------------------------------------

START = datetime(2026, 9, 1, tzinfo=UTC)


def plateau_days(days: int = 9, step: int = 15) -> pl.DataFrame:
    """One workload's heap and CPU: a business-hours plateau each day with noise."""
    rng = np.random.default_rng(3)
    n = days * 1440 // step
    ts = [START + timedelta(minutes=step * i) for i in range(n)]
    day = np.clip(1.8 * np.sin(2 * np.pi * (np.arange(n) * step / 60 - 8) / 24), -1, 1)
    return pl.concat([pl.DataFrame({
        s.SERIES_ID: s.series_id("shop", metric), s.ENTITY: "shop", s.METRIC: metric, s.TS: ts,
        s.VALUE: base + scale * day + rng.normal(0, 1.5, n),
        s.N_PODS: pl.Series([3] * n, dtype=pl.UInt32), s.FILLED: False,
    }).with_columns(pl.col(s.TS).dt.cast_time_unit("us"))
        for metric, base, scale in (("jvm_heap_pct", 70.0, 18.0), ("cpu_pct", 62.0, 16.2))])


@pytest.mark.slow
def test_retrain_shrinks_the_candidates_levels_toward_the_champions(tmp_path, monkeypatch):
    logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri, uri)
    series = plateau_days()
    end = series[s.TS].max() + timedelta(microseconds=1)
    # a champion trained a day earlier, whose levels an operator had set to 0.9
    first = train_bundle(series.filter(pl.col(s.TS) < end - timedelta(days=2)), TrainConfig())
    model = first.bundle
    forecasters = {sid: model.forecasters[sid] for sid in model.forecasters}
    for f in forecasters.values():
        f.calibrations_ = {h: dataclasses.replace(c, alarm=0.9, alarm_chosen=0.9, for_minutes=0.0)
                           for h, c in f.calibrations_.items()}
    first.bundle = dataclasses.replace(model, forecasters=forecasters)
    _, v1 = log_and_register(first, TrainConfig())
    set_champion(client, v1, "test: the champion's levels")

    out = retrain(series, RetrainConfig(history_days=9, gate=GateConfig(window_hours=24)),
                  echo=lambda _: None)
    candidate = load_version(out.version)  # the candidate as registered: through save and load
    pools = candidate.manifest["alarm_pools"]  # per metric kind: its series' own levels pooled
    assert pools and mlflow.artifacts.load_dict(f"runs:/{out.run_id}/alarm_pools.json") == pools
    shrunk = 0
    for sid in candidate.forecasters:
        for h, c in candidate.forecasters[sid].calibrations_.items():
            assert c.alarm_chosen is not None, (sid, h)  # every level saw the champion's
            assert c.alarm_previous == 0.9, (sid, h)
            n = c.alarm_outcomes
            pool = pools.get(metric_kind(sid), {}).get(f"{h:g}") if n > 0 else None
            k = min(pool["outcomes"], PRIOR_POOL_OUTCOMES) if pool else 0.0
            assert c.alarm_pooled == (pool["level"] if pool else None), (sid, h)
            # pooled with its kind, then smoothed toward the champion's (kept where n = 0)
            estimate = (n * c.alarm_chosen + k * (pool["level"] if pool else 0.0)) / (n + k) \
                if n + k > 0 else 0.0
            want = (n * estimate + PRIOR_ALARM_OUTCOMES * 0.9) / (n + PRIOR_ALARM_OUTCOMES)
            assert c.alarm == pytest.approx(want, abs=1e-4), (sid, h)
            shrunk += c.alarm_chosen < 0.9 - 1e-9 and c.alarm > c.alarm_chosen
    assert shrunk > 0
    # the answer says where its alarm level came from
    sid = s.series_id("shop", "jvm_heap_pct")
    calibration = candidate.forecasters[sid].calibration_for(60)
    threshold = float(np.mean(calibration.above))
    answer = predict_series(candidate, sid, threshold, "above", 60)
    assert f"alarm level {calibration.alarm:g}" in answer.calibration_note
    assert f"P >= {calibration.alarm:g}" in answer.alert_rule
    assert ("shrunk toward the previous model's level" in answer.calibration_note
            or "from the previous model's level" in answer.calibration_note)

    # `prealert train` (registers, never promotes) smooths toward the champion the same way
    features = tmp_path / "features"
    features.mkdir()
    series.write_parquet(features / "series.parquet")
    champion = champion_version(client)
    cli = CliRunner().invoke(app, ["train", "--features", str(features), "--n-jobs", "1"])
    assert cli.exit_code == 0, cli.output
    assert f"shrunk toward champion v{champion}'s" in cli.output
    version = cli.output.split("registered version ")[1].split(",")[0]
    by_hand = load_version(version)
    assert all(c.alarm_chosen is not None for sid in by_hand.forecasters
               for c in by_hand.forecasters[sid].calibrations_.values())


# --- shrunk toward the metric kind's pooled level too -------------------------------------------

def test_a_first_train_shrinks_toward_its_kinds_pool_and_a_retrain_toward_both():
    pool = PooledAlarm(0.6, 50.0, 4)
    assert pool.weight == PRIOR_POOL_OUTCOMES  # a pool of many crossings carries at most this
    assert PooledAlarm(0.6, 3.0, 1).weight == 3.0  # a pool of few carries what it holds
    # no champion: toward the pool alone
    first = smoothed_alarm(chosen(0.2, 5.0), None, pooled=pool)
    assert first.alarm == pytest.approx((5 * 0.2 + PRIOR_POOL_OUTCOMES * 0.6) / 15, abs=1e-4)
    assert (first.alarm_chosen, first.alarm_previous, first.alarm_pooled) == (0.2, None, 0.6)
    # a champion too: the choice pooled with its kind, then smoothed toward the champion's
    both = smoothed_alarm(chosen(0.2, 5.0), chosen(0.9, 30.0, 0.0), pooled=pool)
    estimate = (5 * 0.2 + PRIOR_POOL_OUTCOMES * 0.6) / (5 + PRIOR_POOL_OUTCOMES)
    want = (5 * estimate + PRIOR_ALARM_OUTCOMES * 0.9) / (5 + PRIOR_ALARM_OUTCOMES)
    assert both.alarm == pytest.approx(want, abs=1e-4)
    assert (both.alarm_previous, both.alarm_pooled, both.for_minutes) == (0.9, 0.6, 10.0)
    # no crossings of its own and no champion: the kind's level, not the default 0.5
    quiet = smoothed_alarm(chosen(0.5, 0.0, None), None, pooled=pool)
    assert (quiet.alarm, quiet.for_minutes) == (0.6, None)
    # no crossings of its own with a champion: the champion's level and `for` stand (they carry
    # the earlier pools: a pull toward each new pool would drift them every retrain)
    kept = smoothed_alarm(chosen(0.5, 0.0, None), chosen(0.9, 30.0, 0.0), pooled=pool)
    assert (kept.alarm, kept.for_minutes, kept.alarm_previous, kept.alarm_pooled) == (
        0.9, 0.0, 0.9, None)
    assert smoothed_alarm(chosen(0.5, 0.0, None), kept, pooled=PooledAlarm(0.1, 40.0, 3)).alarm == 0.9
    # an empty pool is no prior
    assert smoothed_alarm(chosen(0.2, 5.0), None, pooled=PooledAlarm(0.6, 0.0, 0)).alarm == 0.2


def test_pools_weigh_each_series_by_its_crossings_and_stay_within_a_kind_and_horizon():
    runs = {"a/jvm_heap_pct": {60.0: chosen(0.2, 10.0), 120.0: chosen(0.9, 4.0)},
            "b/jvm_heap_pct": {60.0: chosen(0.8, 30.0), 120.0: chosen(0.5, 0.0)},
            "a/apdex": {60.0: chosen(0.4, 2.0)},
            "lonely": {60.0: chosen(0.3, 6.0)}}
    smoothed, pools = shrunk_toward_pools(runs)
    assert metric_kind("a/jvm_heap_pct") == "jvm_heap_pct" and metric_kind("lonely") == "lonely"
    heap = pools["jvm_heap_pct", 60.0]
    assert heap.level == pytest.approx((10 * 0.2 + 30 * 0.8) / 40) and heap.outcomes == 40
    assert heap.n_series == 2
    # a level chosen on no crossings of its own says nothing about its kind
    assert pools["jvm_heap_pct", 120.0] == PooledAlarm(0.9, 4.0, 1)
    assert set(pools) == {("jvm_heap_pct", 60.0), ("jvm_heap_pct", 120.0), ("apdex", 60.0),
                          ("lonely", 60.0)}
    a = smoothed["a/jvm_heap_pct"][60.0]
    assert a.alarm == pytest.approx((10 * 0.2 + 10 * heap.level) / 20, abs=1e-4)
    assert smoothed["b/jvm_heap_pct"][120.0].alarm == 0.9  # no evidence: its kind's level
    # a kind of one series is pulled toward its own choice: unchanged
    assert smoothed["lonely"][60.0].alarm == 0.3
    # smoothing again from the smoothed levels (what training does after the workers smoothed
    # toward the champion) starts from each replay's own choice: the same answer
    again, pools_again = shrunk_toward_pools(smoothed)
    assert again == smoothed and pools_again == pools


def test_a_champion_and_the_pool_together_and_a_repeat_is_idempotent():
    runs = {"a/disk_pct": {60.0: chosen(0.2, 10.0)}, "b/disk_pct": {60.0: chosen(0.6, 10.0)}}
    champion = {"a/disk_pct": {60.0: chosen(0.9, 20.0, 0.0)}}
    # the workers' own choices (not smoothed): one smoothing, toward the pool and the champion
    smoothed, pools = shrunk_toward_pools(runs, champion)
    assert pools["disk_pct", 60.0].level == pytest.approx(0.4)
    a, b = smoothed["a/disk_pct"][60.0], smoothed["b/disk_pct"][60.0]
    estimate = (10 * 0.2 + 10 * 0.4) / 20  # pooled with its kind, then smoothed over time
    assert a.alarm == pytest.approx((10 * estimate + 10 * 0.9) / 20, abs=1e-4)
    assert b.alarm == pytest.approx((10 * 0.6 + 10 * 0.4) / 20, abs=1e-4)
    assert (a.alarm_previous, b.alarm_previous) == (0.9, None)
    assert shrunk_toward_pools(smoothed, champion)[0] == smoothed


def two_regimes() -> TimingEvidence:
    """A replay whose confident warnings (P 0.9) crossed late (80 min) and whose doubtful ones
    (P 0.3), three times as many, early (20 min): warned at 0.2 the P20 answers best, warned
    at 0.35 or above the P80."""
    p = np.array([0.9] * 10 + [0.3] * 30)
    truth = np.array([80.0] * 10 + [20.0] * 30)
    when = np.tile(np.array(TIMING_LEVELS) * 100, (p.size, 1))
    return TimingEvidence.of(p, when, truth)


def test_the_crossing_time_quantile_is_chosen_under_the_level_served():
    runs = {"a/disk_pct": {60.0: chosen(0.2, 10.0)}, "b/disk_pct": {60.0: chosen(0.8, 10.0)}}
    evidence = two_regimes()
    assert (evidence.best(0.2), evidence.best(0.35), evidence.best(0.95)) == (0.2, 0.8, 0.5)
    assert list(evidence.counts) == [10, 40]  # one row per distinct probability, not per check
    smoothed, _ = shrunk_toward_pools(runs, timing={"a/disk_pct": {60.0: evidence}})
    a = smoothed["a/disk_pct"][60.0]
    assert a.alarm == pytest.approx(0.35) and a.timing == 0.8  # not the 0.2 its own level chose
    assert smoothed["b/disk_pct"][60.0].timing == 0.5  # no evidence: as fitted
    # a smoothing that keeps the own level keeps its quantile
    alone, _ = shrunk_toward_pools({"a/disk_pct": runs["a/disk_pct"]},
                                   timing={"a/disk_pct": {60.0: evidence}})
    assert (alone["a/disk_pct"][60.0].alarm, alone["a/disk_pct"][60.0].timing) == (0.2, 0.2)


GOLDEN = Path(__file__).resolve().parents[2] / "data" / "sample" / "golden_bundle"


def test_pooled_levels_survive_bundle_save_and_load_and_the_answer_names_them(tmp_path):
    golden = ModelBundle.load(GOLDEN)
    heap, apdex = golden.forecasters["golden-app/jvm_heap_pct"], golden.forecasters["golden-app/apdex"]
    stored = StoredForecasters(tmp_path / "run")
    levels = {"shop/jvm_heap_pct": (heap, 0.2, 10.0), "cart/jvm_heap_pct": (heap, 0.8, 30.0),
              "shop/apdex": (apdex, 0.5, 0.0)}
    horizons = (60.0, 120.0)
    for sid, (model, alarm, n) in levels.items():
        # as a holdout replay fits them (the golden bundle predates calibrations)
        model.calibrations_ = {h: ProbabilityCalibration(
            knots=(0.0, 0.5, 1.0), values=(0.0, 0.4, 1.0), n_fitted=500, alarm=alarm,
            alarm_outcomes=n, for_minutes=5.0, above=(80.0, 95.0), below=(0.2, 0.5))
            for h in horizons}
        stored.add(sid, json.dumps(model.to_dict(with_prophet=False)), model.prophet_json())
    champion = {"shop/jvm_heap_pct": {h: chosen(0.9, 20.0, 0.0) for h in horizons}}
    pools = stored.pool_alarm_levels(champion, {"shop/jvm_heap_pct": {60.0: two_regimes()}})
    pool = (10 * 0.2 + 30 * 0.8) / 40
    assert pools["jvm_heap_pct"][f"{horizons[0]:g}"] == {"level": pool, "outcomes": 40.0,
                                                         "n_series": 2}
    assert "apdex" not in pools  # chosen on no crossings: no pool
    manifest = dict(golden.manifest, alarm_pools=pools)
    ModelBundle(manifest, stored, {}).save(tmp_path / "bundle")
    loaded = ModelBundle.load(tmp_path / "bundle")
    assert loaded.manifest["alarm_pools"] == pools
    shop = loaded.forecasters["shop/jvm_heap_pct"].calibration_for(60)
    estimate = (10 * 0.2 + PRIOR_POOL_OUTCOMES * pool) / (10 + PRIOR_POOL_OUTCOMES)
    want = (10 * estimate + PRIOR_ALARM_OUTCOMES * 0.9) / (10 + PRIOR_ALARM_OUTCOMES)
    assert shop.alarm == pytest.approx(want, abs=1e-4)
    assert (shop.alarm_chosen, shop.alarm_previous, shop.alarm_pooled) == (0.2, 0.9, pool)
    assert shop.timing == 0.8  # chosen under the served level (0.66), not its own (0.2)
    cart = loaded.forecasters["cart/jvm_heap_pct"].calibration_for(60)
    assert cart.alarm == pytest.approx((30 * 0.8 + 10 * pool) / 40, abs=1e-4)
    assert loaded.forecasters["shop/apdex"].calibration_for(60).alarm == 0.5  # nothing to pull
    # the answer says what its level was shrunk toward
    threshold = float(np.mean(shop.above))
    answer = predict_series(loaded, "shop/jvm_heap_pct", threshold, "above", 60)
    assert (f"the holdout chose 0.2 on 10 crossings, shrunk toward the previous model's level "
            f"0.9 and the metric kind's pooled level {pool:g}") in answer.calibration_note
    answer = predict_series(loaded, "cart/jvm_heap_pct", threshold, "above", 60)
    assert f"shrunk toward the metric kind's pooled level {pool:g}" in answer.calibration_note
    # a bundle's own files are checked against its manifest: no rewriting them after the fact
    with pytest.raises(ValueError, match="only while training"):
        ModelBundle.load(tmp_path / "bundle", series="lazy").forecasters.set_calibrations(
            "shop/apdex", {})

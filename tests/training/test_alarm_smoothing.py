"""Alarm levels smoothed across retrains: the rule, the replay's use of it, and the retrain's."""

import dataclasses
import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from features import schema as s
from serving.cli import app
from training.evaluation.gate import GateConfig
from training.evaluation.replay import ReplayOutcome, calibrate_on_replay
from training.evaluation.report import alarm_level_changes
from training.predict import predict_series
from training.registry import champion_version, load_version, log_and_register, set_champion
from training.retrain import RetrainConfig, retrain
from training.threshold import PRIOR_ALARM_OUTCOMES, AlertRule, ProbabilityCalibration, smoothed_alarm
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
        assert dataclasses.replace(shrunk, alarm=alone.alarm, alarm_chosen=None) == alone
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
    shrunk = 0
    for sid in candidate.forecasters:
        for h, c in candidate.forecasters[sid].calibrations_.items():
            assert c.alarm_chosen is not None, (sid, h)  # every level saw the champion's
            n = c.alarm_outcomes
            want = 0.9 if n == 0 else (n * c.alarm_chosen + PRIOR_ALARM_OUTCOMES * 0.9) / (
                n + PRIOR_ALARM_OUTCOMES)
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
            or "kept from the previous model" in answer.calibration_note)

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

"""The end-to-end demo: sample export -> features -> retrain (gate, @champion) -> real service -> answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import polars as pl

from features import schema as s
from features.build import load_series, run_build
from serving.server import free_port, start_service, stop_service, wait_ready
from training.fanout import quiet_libraries
from training.registry import load_version, tracking_uri
from training.retrain import PROMOTED, RetrainConfig, retrain
from training.train import TrainConfig

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


@dataclass
class DemoCase:
    series_id: str
    threshold: float
    direction: str
    true_crossing: datetime
    asked_at: datetime
    answer: dict
    request: dict

    @property
    def error_minutes(self) -> float | None:
        if self.answer.get("crossing_at") is None:
            return None
        predicted = datetime.fromisoformat(self.answer["crossing_at"].replace("Z", "+00:00"))
        return (predicted - self.true_crossing).total_seconds() / 60


    @property
    def true_minutes(self) -> float:
        return (self.true_crossing - self.asked_at).total_seconds() / 60

    @property
    def interval_verdict(self) -> str:
        """Whether the true crossing fell inside the answer's P10-P90, said plainly either way."""
        lo, hi = self.answer.get("earliest_minutes"), self.answer.get("latest_minutes")
        truth = self.true_minutes
        if lo is None or hi is None:
            return f"MISSED: no crossing interval given; the true crossing came after {truth:.0f} min"
        if lo <= truth <= hi:
            return f"true crossing after {truth:.0f} min: inside the P10-P90 interval {lo:.0f}-{hi:.0f}"
        return (f"MISSED: true crossing after {truth:.0f} min lies outside the P10-P90 interval "
                f"{lo:.0f}-{hi:.0f} (intervals are meant to hold it about 8 times in 10)")


def _same_from_the_notebook(case: DemoCase, series: pl.DataFrame, config: TrainConfig,
                            until: datetime, horizon_minutes: float, echo) -> None:
    """The README's notebook entry on the data the served model saw answers what the service did."""
    from training.predict import CrossingPredictor

    history = series.filter(pl.col(s.SERIES_ID) == case.series_id, pl.col(s.TS) < until)
    recent = [(datetime.fromisoformat(o["ts"]), o["value"]) for o in case.request["recent"]]
    est = CrossingPredictor(holdout_hours=config.holdout_hours, alert_rule=config.alert_rule,
                            **config.forecaster).fit(history, series_id=case.series_id)
    mine = est.predict(case.threshold, case.direction, horizon_minutes, recent=recent)
    same = all(getattr(mine, k) == case.answer[k] for k in (
        "minutes_to_threshold", "earliest_minutes", "latest_minutes", "probability", "alert"))
    echo(f"notebook entry, CrossingPredictor().fit(history).predict(...) on {case.series_id}:")
    echo(f"  {mine.sentence()}")
    verdict = ("the same answer as the service" if same
               else f"DIFFERS from the service: {case.answer['message']}")
    echo(f"  {verdict}")


REPORT = Path(__file__).resolve().parents[2] / "reports" / "evaluate.md"


def backtest_coverage(report: Path = REPORT) -> dict[int, float]:
    """prealert's pooled P10-P90 coverage per horizon, as the committed backtest report states it."""
    if not report.exists():
        return {}
    lines = report.read_text().split("## pooled", 1)[-1].split("\n## ", 1)[0].splitlines()
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines
             if line.startswith("|")]
    if not table or "coverage_p10_p90" not in table[0]:
        return {}
    col = table[0].index("coverage_p10_p90")
    return {int(r[1]): float(r[col]) for r in table[2:]
            if r[0] == "prealert" and r[col] not in ("–", "")}


def coverage_line(cases: list[DemoCase], report: Path = REPORT) -> str:
    """How many true crossings fell inside their P10-P90, beside what the backtest measured."""
    inside = sum(c.interval_verdict.startswith("true crossing") for c in cases)
    measured = backtest_coverage(report)
    said = ", ".join(f"{v:.2f} at H = {h} min" for h, v in sorted(measured.items()))
    return (f"  {inside} of {len(cases)} true crossings inside the answer's P10-P90 interval; "
            + (f"the backtest measures a coverage of {said} ({report.name}): "
               "with this few crossings a miss is no surprise, and it is named above"
               if said else "no backtest report to compare with"))


def load_ground_truth(sample: Path = SAMPLE) -> dict:
    return json.loads((sample / "ground_truth.json").read_text())


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def run_demo(
    workdir: Path,
    sample: Path = SAMPLE,
    lead_hours: float = 2.0,
    horizon_minutes: float = 360.0,
    step: str = "5m",
    include: list[str] | None = None,
    n_jobs: int = 2,
    echo=print,
) -> list[DemoCase]:
    """Run the whole path and return each injected crossing with the service's answer.

    ``prealert retrain`` runs on the data before ``lead_hours`` ahead of the earliest injected
    crossing (the candidate learns on what precedes its gate window, the gate judges it on that
    window and moves ``@champion``); each request sends the 90 minutes before its own ask time.
    """
    quiet_libraries()
    truth = load_ground_truth(sample)
    crossings = truth["crossings"]
    features_dir = workdir / "features"
    echo(f"[1/4] feature job: {sample / 'export'} -> {features_dir}")
    report = run_build(sample / "export", features_dir, step=step)
    echo("      " + report.summary())
    series = load_series(features_dir)

    first = min(_utc(c["crossed_at"]) for c in crossings)
    until = first - timedelta(hours=lead_hours)
    config = RetrainConfig(until=until, train=TrainConfig(include=include or [], n_jobs=n_jobs))
    echo(f"[2/4] prealert retrain on the data before {until.isoformat()} ({tracking_uri()})")
    outcome = retrain(series, config, echo=lambda line: echo(f"      {line}"))
    echo(f"      {outcome.summary()}")
    serving_note, bundle_dir = "loads prealert@champion", None
    if outcome.status != PROMOTED and outcome.champion_before is None:
        # nothing to serve as champion: show the candidate, and say plainly that it is not one
        bundle_dir = load_version(outcome.version).save(workdir / "candidate-bundle")
        serving_note = (f"NO champion (the gate kept none: {outcome.reason}); serving candidate "
                        f"v{outcome.version} from {bundle_dir} for the demo only")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    echo(f"[3/4] bentoml serve on {url} ({serving_note})")
    proc = start_service(port, bundle=bundle_dir, log_file=workdir / "bentoml.log")
    cases = []
    try:
        wait_ready(proc, url)
        for c in crossings:
            asked = _utc(c["crossed_at"]) - timedelta(hours=lead_hours)
            recent = series.filter(
                (pl.col(s.SERIES_ID) == c["series_id"]) & (pl.col(s.TS) <= asked)
                & (pl.col(s.TS) > asked - timedelta(minutes=90))  # the alert rule's checks too
            ).drop_nulls(s.VALUE)
            body = {
                "series_id": c["series_id"], "threshold": c["threshold"],
                "direction": c["direction"], "horizon_minutes": horizon_minutes,
                "recent": [{"ts": t.isoformat(), "value": v}
                           for t, v in recent.select(s.TS, s.VALUE).iter_rows()],
            }
            resp = httpx.post(f"{url}/predict", json=body, timeout=60)
            resp.raise_for_status()
            cases.append(DemoCase(c["series_id"], c["threshold"], c["direction"],
                                  _utc(c["crossed_at"]), asked, resp.json(), body))
    finally:
        stop_service(proc)
    echo("[4/4] answers beside the ground truth:")
    for case in cases:
        a = case.answer
        err = case.error_minutes
        echo(f"  {a['message']}")
        echo(f"      asked at {case.asked_at:%Y-%m-%d %H:%M} UTC, predicted crossing "
             f"{a['crossing_at'] or '-'}, true crossing {case.true_crossing:%Y-%m-%d %H:%M} UTC"
             + (f", error {err:+.0f} min" if err is not None else ""))
        echo(f"      {case.interval_verdict}")
        drivers = ", ".join(f"{d['meaning']} {d['change']:+.2f}" for d in a["drivers"]) or "-"
        echo(f"      driven by: {drivers}; anomaly score {a['anomaly_score']}; "
             f"model {a['model_version']}")
        echo(f"      alert: {'yes' if a['alert'] else 'no'} ({a['alert_rule']})")
        echo(f"      probability {a['calibration_note']}; calendar {a['calendar']}")
    if cases:
        echo(coverage_line(cases))
    if cases:
        gate_start = datetime.fromisoformat(outcome.window["gate_start"])
        _same_from_the_notebook(cases[0], series, config.train, gate_start, horizon_minutes, echo)
    echo("Open the run in the MLflow UI:\n"
         f"  uv run mlflow ui --backend-store-uri {tracking_uri()} --host 127.0.0.1 --port 5000\n"
         f"  then http://127.0.0.1:5000 (experiment 'prealert', run {outcome.run_id})")
    return cases

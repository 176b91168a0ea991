"""Write the small golden model bundle that tests load to prove each release still reads it.

Run once per bundle schema version: ``uv run python data/sample/make_golden_bundle.py``
(move the previous version's folder to ``golden_bundle_v<N>`` first: tests load every one);
after a deliberate change of the answers, ``... make_golden_bundle.py --answers-only``.
The bundle comes from a seeded synthetic workload (two metrics, three days, 15-minute step);
``expected.json`` records what it answered when written.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from features import schema as s
from training.bundle import ModelBundle
from training.predict import predict_series
from training.train import TrainConfig, train_bundle

OUT = Path(__file__).resolve().parent / "golden_bundle"
START = datetime(2026, 10, 12, tzinfo=UTC)
QUESTIONS = [("golden-app/jvm_heap_pct", 68.0, "above"), ("golden-app/apdex", 0.9395, "below")]


def golden_series() -> pl.DataFrame:
    rng = np.random.default_rng(2026)
    n = 3 * 96
    ts = [START + timedelta(minutes=15 * i) for i in range(n)]
    hours = np.arange(n) / 4
    frames = []
    for metric, y in (
        ("jvm_heap_pct", 55 + 0.15 * hours + 5 * np.sin(2 * np.pi * hours / 24)
         + rng.normal(0, 0.5, n)),
        ("apdex", 0.97 - 0.0004 * hours + rng.normal(0, 0.002, n)),
    ):
        frames.append(pl.DataFrame({
            s.SERIES_ID: s.series_id("golden-app", metric), s.ENTITY: "golden-app",
            s.METRIC: metric, s.TS: ts, s.VALUE: y,
            s.N_PODS: pl.Series([5] * n, dtype=pl.UInt32), s.FILLED: False,
        }).with_columns(pl.col(s.TS).dt.cast_time_unit("us")))
    return pl.concat(frames)


def record_answers(bundle) -> dict:
    answers = {}
    for sid, threshold, direction in QUESTIONS:
        p = predict_series(bundle, sid, threshold, direction, 240)
        answers[sid] = {"threshold": threshold, "direction": direction,
                        "minutes_to_threshold": p.minutes_to_threshold,
                        "probability": p.probability}
    (OUT / "expected.json").write_text(json.dumps(answers, indent=2) + "\n")
    return answers


def main(answers_only: bool = False) -> None:
    """Write the bundle and its answers; with ``answers_only``, re-record the answers of the
    committed bundle (after a deliberate change of what prealert answers)."""
    if answers_only:
        bundle = ModelBundle.load(OUT)
    else:
        result = train_bundle(golden_series(), TrainConfig(holdout_hours=12, n_jobs=1,
                                                           forecaster={"min_history_hours": 24}))
        shutil.rmtree(OUT, ignore_errors=True)
        result.bundle.manifest["created_at"] = "golden"
        result.bundle.save(OUT)
        bundle = ModelBundle.load(OUT)  # the answers of what is served: the bundle as loaded
    print(f"wrote {OUT}: {record_answers(bundle)}")


if __name__ == "__main__":
    import sys

    main(answers_only="--answers-only" in sys.argv)

"""The demo's verdicts: each miss named, and the count beside the backtest's measured coverage."""

from datetime import UTC, datetime, timedelta

from serving.cli.demo import DemoCase, backtest_coverage, coverage_line

ASKED = datetime(2026, 10, 3, 12, tzinfo=UTC)


def case(lo, hi, true_minutes=120.0) -> DemoCase:
    answer = {"earliest_minutes": lo, "latest_minutes": hi, "crossing_at": None}
    return DemoCase("app/jvm_heap_pct", 90, "above", ASKED + timedelta(minutes=true_minutes),
                    ASKED, answer, {})


def test_a_miss_is_named_and_counted_against_the_backtest(tmp_path):
    report = tmp_path / "evaluate.md"
    report.write_text("# x\n\n## pooled\n\n| predictor | horizon | coverage_p10_p90 |\n|---|---|---|\n"
                      "| prealert | 60 | 0.756 |\n| static_90pct | 60 | – |\n"
                      "| prealert | 120 | 0.785 |\n\n## sample\n\n| predictor | horizon |"
                      " coverage_p10_p90 |\n|---|---|---|\n| prealert | 60 | 0.1 |\n")
    assert backtest_coverage(report) == {60: 0.756, 120: 0.785}
    hit, miss = case(100, 150), case(150, 210)
    assert miss.interval_verdict.startswith("MISSED") and "150-210" in miss.interval_verdict
    line = coverage_line([hit, miss], report)
    assert "1 of 2 true crossings inside" in line and "0.76 at H = 60 min" in line
    assert "no backtest report" in coverage_line([hit], tmp_path / "none.md")

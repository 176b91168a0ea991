"""The committed golden bundle still loads and answers as it did when it was written."""

import json
import shutil
from pathlib import Path

import pytest

from training.bundle import BUNDLE_SCHEMA_VERSION, ModelBundle
from training.predict import predict_series

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "sample" / "golden_bundle"


def test_golden_bundle_loads_and_answers_as_recorded():
    bundle = ModelBundle.load(GOLDEN)
    expected = json.loads((GOLDEN / "expected.json").read_text())
    assert set(bundle.forecasters) == set(expected)
    assert bundle.manifest["schema_version"] <= BUNDLE_SCHEMA_VERSION
    for sid, want in expected.items():
        p = predict_series(bundle, sid, want["threshold"], want["direction"], 240)
        if want["minutes_to_threshold"] is None:
            assert p.minutes_to_threshold is None
        else:
            assert p.minutes_to_threshold == pytest.approx(want["minutes_to_threshold"], abs=1.0)
        assert p.probability == pytest.approx(want["probability"], abs=0.02)
    assert bundle.detectors["golden-app"].score([[0.0, 0.0]])[0] <= 1.0


def test_a_newer_bundle_schema_is_refused_with_a_clear_message(tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(GOLDEN, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = BUNDLE_SCHEMA_VERSION + 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="upgrade prealert or retrain"):
        ModelBundle.load(copy)
    with pytest.raises(ValueError, match="not a model bundle"):
        ModelBundle.load(tmp_path)

"""The bundle on disk: every released golden bundle still loads and answers as recorded; file names
cannot collide; a changed, missing or pickled file is refused with a message naming it."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.bundle import BUNDLE_SCHEMA_VERSION, BundleIntegrityError, ModelBundle, file_stem
from training.predict import predict_series

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
GOLDEN = SAMPLE / "golden_bundle"
#: the current golden bundle, then one per earlier schema version
GOLDENS = [GOLDEN, SAMPLE / "golden_bundle_v2", SAMPLE / "golden_bundle_v1"]


@pytest.mark.parametrize("folder", GOLDENS, ids=lambda p: p.name)
def test_golden_bundles_load_and_answer_as_recorded(folder):
    bundle = ModelBundle.load(folder)
    expected = json.loads((folder / "expected.json").read_text())
    assert set(bundle.forecasters) == set(expected)
    assert bundle.manifest["schema_version"] <= BUNDLE_SCHEMA_VERSION
    exact = bundle.manifest["schema_version"] >= 2  # lossless since version 2
    for sid, want in expected.items():
        p = predict_series(bundle, sid, want["threshold"], want["direction"], 240)
        if want["minutes_to_threshold"] is None:
            assert p.minutes_to_threshold is None
        elif exact:
            assert p.minutes_to_threshold == want["minutes_to_threshold"]
            assert p.probability == want["probability"]
        else:
            assert p.minutes_to_threshold == pytest.approx(want["minutes_to_threshold"], abs=1.0)
            assert p.probability == pytest.approx(want["probability"], abs=0.02)
    assert bundle.detectors["golden-app"].score([[0.0, 0.0]])[0] <= 1.0


def test_the_current_golden_bundle_is_of_the_current_schema():
    assert json.loads((GOLDEN / "manifest.json").read_text())["schema_version"] == BUNDLE_SCHEMA_VERSION


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


def test_file_names_are_distinct_short_and_safe_for_any_id():
    ids = ["결제/jvm_heap_pct", "주문/jvm_heap_pct", "!!!/cpu", "???/cpu", "a" * 300 + "/cpu",
           "a" * 300 + "/mem", "portal-demo/jvm_heap_pct", "portal_demo/jvm_heap_pct", "../../etc/x"]
    stems = [file_stem(i) for i in ids]
    assert len(set(stems)) == len(ids)
    for stem in stems:
        assert len(stem) <= 61 and "/" not in stem and not stem.startswith(".")
        assert stem.isascii()


def test_korean_and_long_ids_each_keep_their_own_model(tmp_path):
    """Two services whose names differ only in Hangul are two models after a round trip."""
    golden = ModelBundle.load(GOLDEN)
    heap = golden.forecasters["golden-app/jvm_heap_pct"]
    apdex = golden.forecasters["golden-app/apdex"]
    long_id = "서비스-" + "x" * 300 + "/jvm_heap_pct"
    bundle = ModelBundle({"data_fingerprint": "t"},
                         {"결제/jvm_heap_pct": heap, "주문/jvm_heap_pct": apdex, long_id: heap},
                         {"결제": golden.detectors["golden-app"]})
    back = ModelBundle.load(bundle.save(tmp_path / "b"))
    assert set(back.forecasters) == {"결제/jvm_heap_pct", "주문/jvm_heap_pct", long_id}
    assert back.forecasters["결제/jvm_heap_pct"].sigma_ == heap.sigma_
    assert back.forecasters["주문/jvm_heap_pct"].sigma_ == apdex.sigma_
    assert set(back.detectors) == {"결제"}


def _copy(tmp_path) -> tuple[Path, dict]:
    copy = tmp_path / "bundle"
    shutil.copytree(GOLDEN, copy)
    return copy, json.loads((copy / "manifest.json").read_text())


def test_a_changed_file_is_refused_naming_it(tmp_path):
    copy, manifest = _copy(tmp_path)
    name = manifest["series_files"]["golden-app/apdex"]
    state = json.loads((copy / name).read_text())
    state["sigma"] *= 2
    (copy / name).write_text(json.dumps(state))
    with pytest.raises(BundleIntegrityError, match=f"{Path(name).name}: checksum does not match"):
        ModelBundle.load(copy)


def test_a_missing_or_unlisted_file_is_refused(tmp_path):
    copy, manifest = _copy(tmp_path)
    name = manifest["detector_folders"]["golden-app"] + "/forest.npz"
    (copy / name).unlink()
    with pytest.raises(BundleIntegrityError, match="forest.npz: listed in the manifest but missing"):
        ModelBundle.load(copy)
    copy, manifest = _copy(tmp_path / "2")
    del manifest["checksums"][manifest["series_files"]["golden-app/apdex"]]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="not covered by a checksum"):
        ModelBundle.load(copy)
    del manifest["checksums"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="no checksums"):
        ModelBundle.load(copy)


def test_a_path_outside_the_bundle_is_refused(tmp_path):
    copy, manifest = _copy(tmp_path)
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    manifest["series_files"]["golden-app/apdex"] = "../elsewhere.json"
    manifest["checksums"]["../elsewhere.json"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleIntegrityError, match="outside the bundle"):
        ModelBundle.load(copy)


def test_a_bundle_with_a_planted_pickle_never_runs_it(tmp_path):
    """A detector folder rewritten to claim the old joblib format, checksums updated to match."""
    import hashlib

    import joblib

    copy, manifest = _copy(tmp_path)
    folder = manifest["detector_folders"]["golden-app"]
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (marker.write_text, ("ran",))

    joblib.dump(Planted(), copy / folder / "forest.joblib")
    meta = json.loads((copy / folder / "detector.json").read_text())
    meta["format"] = 1
    (copy / folder / "detector.json").write_text(json.dumps(meta))
    for f in ("detector.json", "forest.joblib"):
        manifest["checksums"][f"{folder}/{f}"] = hashlib.sha256((copy / folder / f).read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="pickled forest"):
        ModelBundle.load(copy)
    assert not marker.exists()


def test_error_paths_round_trip_bit_for_bit(tmp_path):
    golden = ModelBundle.load(GOLDEN)
    heap = golden.forecasters["golden-app/jvm_heap_pct"]
    heap.error_paths_ = (np.random.default_rng(1).normal(0, 1e-3, heap.error_paths_.shape) * 1e5
                         ).astype(np.float32)
    back = ModelBundle.load(golden.save(tmp_path / "b")).forecasters["golden-app/jvm_heap_pct"]
    np.testing.assert_array_equal(back.error_paths_, heap.error_paths_)


def _answers(bundle: ModelBundle) -> list[dict]:
    """Answers over thresholds, directions and observations, as dicts (every field)."""
    from datetime import timedelta

    out = []
    for sid, model in sorted(bundle.forecasters.items()):
        end = model.last_ts_
        recent = [(end + timedelta(minutes=15 * k), 60.0 + k) for k in range(-8, 1)]
        for threshold, direction in ((68.0, "above"), (0.9395, "below"), (75.0, "above")):
            for obs in (None, recent):
                out.append(predict_series(bundle, sid, threshold, direction, 240,
                                          recent=obs).as_dict())
    return out


def test_the_v2_golden_bundle_answers_exactly_as_its_v3_rewrite():
    """Schema 3 stores the point model's parameters instead of deriving them from Prophet's JSON:
    every field of every answer is the same, bit for bit."""
    v2, v3 = ModelBundle.load(SAMPLE / "golden_bundle_v2"), ModelBundle.load(GOLDEN)
    assert v2.manifest["schema_version"] == 2 and v3.manifest["schema_version"] == 3
    assert _answers(v2) == _answers(v3)


def test_loading_a_bundle_parses_no_prophet_model():
    bundle = ModelBundle.load(GOLDEN)
    prophets = [m for m in bundle.forecasters.values() if m.kind_ == "prophet"]
    assert prophets and all(m.point_model_ is not None for m in prophets)
    _answers(bundle)  # the served path does not need the Prophet object either
    assert not any(m.prophet_loaded for m in prophets)
    ts, values = prophets[0].training_tail(60)  # the training history does: parsed on first use
    assert prophets[0].prophet_loaded and ts.size == values.size > 0


def test_a_changed_prophet_file_is_refused_when_it_is_read(tmp_path):
    copy, manifest = _copy(tmp_path)
    name = manifest["prophet_files"]["golden-app/apdex"]
    (copy / name).write_text((copy / name).read_text().replace('"y_scale": ', '"y_scale": 1'))
    bundle = ModelBundle.load(copy)  # not read on load ...
    with pytest.raises(BundleIntegrityError, match=f"{Path(name).name}: checksum does not match"):
        bundle.forecasters["golden-app/apdex"].training_tail(60)  # ... but never used unchecked
    (copy / name).unlink()
    with pytest.raises(BundleIntegrityError, match="listed in the manifest but missing"):
        ModelBundle.load(copy)


def test_a_loaded_bundle_saves_again_without_parsing_prophet(tmp_path):
    bundle = ModelBundle.load(GOLDEN)
    again = ModelBundle.load(bundle.save(tmp_path / "again"))
    assert not any(m.prophet_loaded for m in bundle.forecasters.values())
    assert _answers(again) == _answers(bundle)
    name = bundle.manifest["prophet_files"]["golden-app/apdex"]
    assert (tmp_path / "again" / name).read_bytes() == (GOLDEN / name).read_bytes()


def test_an_eager_load_outlives_its_folder(tmp_path):
    shutil.copytree(GOLDEN, tmp_path / "b")
    lazy, eager = ModelBundle.load(tmp_path / "b"), ModelBundle.load(tmp_path / "b", prophet="eager")
    assert all(m.prophet_loaded for m in eager.forecasters.values() if m.kind_ == "prophet")
    shutil.rmtree(tmp_path / "b")
    again = ModelBundle.load(eager.save(tmp_path / "again"))
    assert _answers(again) == _answers(eager)
    with pytest.raises(BundleIntegrityError, match="listed in the manifest but missing"):
        lazy.save(tmp_path / "lazy")

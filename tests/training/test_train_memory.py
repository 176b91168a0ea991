"""Training keeps its fitted models on disk, not in memory: written as each task finishes, read
when asked for, and the saved bundle is byte for byte what saving the models held in memory gives."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest
from test_fanout import cyclic_series, small_config

from training.bundle import BundleIntegrityError, ModelBundle, StoredDetectors, StoredForecasters
from training.forecast.forecaster import SeriesForecaster
from training.train import train_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("spool")
    return train_bundle(cyclic_series(), small_config(n_jobs=1), workdir=workdir), workdir


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def test_the_trained_bundle_holds_no_model_in_memory(trained):
    result, workdir = trained
    bundle = result.bundle
    assert isinstance(bundle.forecasters, StoredForecasters)
    assert isinstance(bundle.detectors, StoredDetectors)
    assert sorted(bundle.forecasters) == sorted(result.bundle.manifest["series"])
    assert len(list((workdir / "prophet").iterdir())) == len(bundle.forecasters) == 4
    model = bundle.forecasters["app-0/cpu_pct"]
    assert model.kind_ == "prophet" and not model.prophet_loaded  # parsed only when needed
    assert len(model.training_tail(60)[0]) == 13  # ... from the file the worker wrote
    assert model.prophet_loaded


def test_saving_copies_exactly_what_saving_the_models_in_memory_writes(trained, tmp_path):
    result, _ = trained
    stored = result.bundle
    in_memory = {}
    for sid in stored.forecasters:
        model = stored.forecasters[sid]
        model.model_  # noqa: B018 -- the Prophet object, so the save serialises it again
        in_memory[sid] = model
    detectors = {e: stored.detectors[e] for e in stored.detectors}
    a = _files(stored.save(tmp_path / "stored"))
    b = _files(ModelBundle(dict(stored.manifest), in_memory, detectors).save(tmp_path / "memory"))
    assert a.keys() == b.keys() and len(a) == 4 + 4 + 2 * 3
    for name in a:
        assert a[name] == b[name], name


def test_a_lazily_loaded_bundle_answers_as_an_eager_one_and_checks_each_file(trained, tmp_path):
    result, _ = trained
    folder = result.bundle.save(tmp_path / "b")
    eager, lazy = ModelBundle.load(folder), ModelBundle.load(folder, series="lazy")
    assert isinstance(lazy.forecasters, StoredForecasters) and set(lazy.forecasters) == set(eager.forecasters)
    ts = np.arange(np.datetime64("2026-09-24T00:00"), np.datetime64("2026-09-24T06:00"),
                   np.timedelta64(5, "m")).astype("datetime64[us]")
    for sid in eager.forecasters:
        np.testing.assert_array_equal(lazy.forecasters[sid].expected(ts), eager.forecasters[sid].expected(ts))
    manifest = json.loads((folder / "manifest.json").read_text())
    name = manifest["series_files"]["app-1/heap_pct"]
    (folder / name).write_text((folder / name).read_text().replace('"sigma": ', '"sigma": 1'))
    again = ModelBundle.load(folder, series="lazy")  # a series file is checked when it is read
    with pytest.raises(BundleIntegrityError, match="checksum does not match"):
        again.forecasters["app-1/heap_pct"]  # noqa: B018
    with pytest.raises(ValueError, match="contradicts"):
        ModelBundle.load(folder, series="lazy", prophet="eager")


def test_the_temporary_folder_goes_with_the_last_model_read_from_it():
    result = train_bundle(cyclic_series(n_entities=1, metrics=("cpu_pct",)), small_config(n_jobs=1))
    folder = result.bundle.forecasters.folder
    model = result.bundle.forecasters["app-0/cpu_pct"]
    del result
    gc.collect()
    assert folder.is_dir()  # a model taken out keeps it: its Prophet JSON is read from there
    assert model.training_tail(30)[0].size == 7
    del model
    gc.collect()
    assert not folder.exists()


def test_error_paths_learned_later_are_those_fit_learns():
    frame = cyclic_series(n_entities=1, metrics=("cpu_pct",)).select("ts", "value")
    now = SeriesForecaster(min_history_hours=24).fit(frame)
    later = SeriesForecaster(min_history_hours=24).fit(frame, in_sample_errors=False)
    assert later.error_paths_.shape == (0, now.error_paths_.shape[1])
    np.testing.assert_array_equal(later.learn_in_sample_errors(frame).error_paths_, now.error_paths_)
    assert now.error_paths_.shape[0] > 0


def test_training_from_the_series_file_gives_the_bundle_training_in_memory_gives(trained, tmp_path):
    """The workers read their own series from the feature job's file: the same bundle (every
    file's bytes; the manifest's step, window and fingerprint), the driver never holding the rows."""
    from test_fanout import _bundle_files

    from training.train import SeriesFile, fingerprint

    result, _ = trained
    frame = cyclic_series().sample(fraction=1.0, shuffle=True, seed=3)  # any row order
    frame.write_parquet(tmp_path / "series.parquet", row_group_size=50)  # many row groups to skip
    source = SeriesFile.of(tmp_path)
    assert fingerprint(source) == fingerprint(frame) == result.bundle.manifest["data_fingerprint"]
    from_file = train_bundle(source, small_config(n_jobs=2))
    a = _bundle_files(result.bundle.save(tmp_path / "memory"))
    b = _bundle_files(from_file.bundle.save(tmp_path / "file"))
    assert a == b and len(a) > 10
    for key in ("step", "training_window", "data_fingerprint"):
        assert from_file.bundle.manifest[key] == result.bundle.manifest[key]
    assert result.bundle.manifest["step"] != "unknown"
    # narrowed as select_training_data narrows a frame: --until and --include
    until = frame["ts"].max() - np.timedelta64(1, "D")
    narrowed = train_bundle(source, small_config(n_jobs=1, until=until, include=["app-0"]))
    assert sorted(narrowed.bundle.forecasters) == ["app-0/cpu_pct", "app-0/heap_pct"]
    assert narrowed.bundle.manifest["training_window"]["end"] < until.isoformat()


def test_the_workers_crossing_margins_are_those_of_the_saved_models(trained):
    """The crossing plots' shortlist is ranked on margins the workers work out beside the
    fitted models: the same numbers the saved models give (so the same plots)."""
    from training.plots import _shortlist, crossing_margin

    result, _ = trained
    bundle = result.bundle
    from_files = {sid: crossing_margin(sid, bundle.forecasters[sid]) for sid in bundle.forecasters}
    assert result.crossing_margins == from_files
    assert any(m is not None for m in from_files.values())
    assert _shortlist(bundle, 2, 240.0, result.crossing_margins) == _shortlist(bundle, 2, 240.0)

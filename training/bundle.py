"""The model bundle: a versioned folder with a manifest, a forecaster per series, a detector per entity."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from training.anomaly.detector import WorkloadAnomalyDetector
from training.forecast.forecaster import SeriesForecaster
from training.threshold import AlertRule, ProbabilityCalibration, shrunk_toward_pools

#: bump when the folder layout or a file format changes; loaders refuse newer versions.
#: 2: file names from a hash of the id, a SHA-256 of every file in the manifest, paths lossless
#: 3: the point model's parameters in the series file, the Prophet JSON apart (``prophet/``),
#:    parsed only when something needs the Prophet object
BUNDLE_SCHEMA_VERSION = 3
LIBRARIES = ("prealert", "prophet", "scikit-learn", "polars", "numpy", "pandas", "mlflow")
#: the readable part of a file name; the hash after it keeps names distinct
_READABLE_CHARS = 40


def file_stem(key: str) -> str:
    """A file name for a series id or entity: injective (a hash of the whole id) and short.

    ``결제/jvm_heap_pct`` and ``주문/jvm_heap_pct`` differ in their hash; a 300-character id
    gives a name of at most 40 + 1 + 20 characters. The id itself is kept in the manifest.
    """
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("._")[:_READABLE_CHARS] or "id"
    return f"{readable}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:20]}"


def library_versions() -> dict[str, str]:
    return {lib: version(lib) for lib in LIBRARIES}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class BundleIntegrityError(ValueError):
    """A bundle file is missing, outside the bundle, unlisted or not what the manifest says."""


def _inside(folder: Path, name: str) -> str:
    """``folder / name`` for a relative name that stays inside the bundle, else an error.

    A string, not a ``Path``: a 10,000-series load makes 40,000 of them.
    """
    parts = name.split("/") if isinstance(name, str) else None
    if not parts or name.startswith("/") or "\\" in name or ".." in parts or not any(parts):
        raise BundleIntegrityError(f"{folder}: manifest names a file outside the bundle: {name!r}")
    return os.path.join(folder, name)


@dataclass
class ModelBundle:
    """Everything serving needs; ``manifest`` says how and on what data it was trained."""

    manifest: dict
    #: a dict, or :class:`StoredForecasters` (training and the gate: each parsed when asked for)
    forecasters: Mapping[str, SeriesForecaster] = field(default_factory=dict)
    #: a dict, or :class:`StoredDetectors` (written by training as each entity finished)
    detectors: Mapping[str, WorkloadAnomalyDetector] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        """Write the bundle; every file's SHA-256 goes into ``manifest.json`` under ``checksums``."""
        folder = Path(folder)
        (folder / "series").mkdir(parents=True, exist_ok=True)
        manifest = dict(self.manifest, schema_version=BUNDLE_SCHEMA_VERSION,
                        libraries=library_versions())
        manifest.pop("registered_version", None)  # the registry says it on load, not the files
        manifest["series_files"], manifest["detector_folders"] = {}, {}
        manifest["prophet_files"] = {}
        (folder / "prophet").mkdir(exist_ok=True)
        names: dict[str, str] = {}
        for kind, items in (("series", self.forecasters), ("anomaly", self.detectors)):
            for key in sorted(items):
                name = f"{kind}/{file_stem(key)}"
                if name in names:  # a 80-bit hash collision: refuse rather than overwrite
                    raise ValueError(f"{key!r} and {names[name]!r} map to the same file {name}")
                names[name] = key
                if kind == "series" and isinstance(items, StoredForecasters):
                    # the files as the worker wrote them: the same bytes, no model parsed
                    series_file, prophet_file = items.files[key]
                    items.copy(series_file, folder / f"{name}.json")
                    manifest["series_files"][key] = f"{name}.json"
                    if prophet_file is not None:
                        prophet = f"prophet/{file_stem(key)}.json"
                        items.copy(prophet_file, folder / prophet)
                        manifest["prophet_files"][key] = prophet
                elif kind == "series":
                    model = items[key]
                    (folder / f"{name}.json").write_text(json.dumps(model.to_dict(with_prophet=False)))
                    manifest["series_files"][key] = f"{name}.json"
                    if model.kind_ == "prophet":
                        prophet = f"prophet/{file_stem(key)}.json"
                        (folder / prophet).write_text(model.prophet_json())
                        manifest["prophet_files"][key] = prophet
                elif isinstance(items, StoredDetectors):
                    if os.path.abspath(items.folder / name) != os.path.abspath(folder / name):
                        shutil.copytree(items.folder / name, folder / name, dirs_exist_ok=True)
                    manifest["detector_folders"][key] = name
                else:
                    items[key].save(folder / name)
                    manifest["detector_folders"][key] = name
        manifest["checksums"] = {
            p.relative_to(folder).as_posix(): _sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        self.manifest = manifest
        return folder

    @classmethod
    def load(cls, folder: str | Path, prophet: str = "lazy", series: str = "eager") -> ModelBundle:
        """Read a bundle, refusing any file that is missing or whose checksum does not match.

        ``prophet="lazy"``: each Prophet model is parsed (its file read and checked) when first
        used, so the folder must outlive the bundle; ``"eager"`` parses them all now, for a
        caller that removes the folder and may still need them (to save the bundle again).
        ``series="lazy"``: not even the series files are parsed now, each is read when asked
        for and dropped after (:class:`StoredForecasters`): memory flat in the number of series,
        for a job that goes through them once (the gate); serving wants ``"eager"``.
        """
        if prophet not in ("lazy", "eager"):
            raise ValueError(f"prophet must be 'lazy' or 'eager', not {prophet!r}")
        if series not in ("lazy", "eager"):
            raise ValueError(f"series must be 'lazy' or 'eager', not {series!r}")
        if series == "lazy" and prophet == "eager":
            raise ValueError("series='lazy' parses nothing at load: prophet='eager' contradicts it")
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            raise ValueError(f"{folder}: not a model bundle (no manifest.json)")
        try:
            manifest = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleIntegrityError(f"{path}: not valid JSON ({exc})") from exc
        got = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if not isinstance(got, int) or got > BUNDLE_SCHEMA_VERSION:
            raise ValueError(
                f"{folder}: bundle schema version {got!r} is not readable by this prealert "
                f"(reads up to {BUNDLE_SCHEMA_VERSION}); upgrade prealert or retrain"
            )
        prophet_files = manifest.get("prophet_files", {})
        sums = manifest.get("checksums", {}) if got >= 2 else None
        if got >= 2:  # series files are checked as they are read, Prophet files when they are
            _verify_checksums(folder, manifest, lazy=set(manifest["series_files"].values())
                              | set(prophet_files.values()))
        forecasters, detectors = {}, {}
        if series == "lazy":
            for name in manifest["series_files"].values():
                _inside(folder, name)  # refuse a path outside the bundle now, not on first use
            forecasters = StoredForecasters(folder, {
                sid: (name, prophet_files.get(sid)) for sid, name in manifest["series_files"].items()
            }, sums)
        for sid, name in (manifest["series_files"] if series == "eager" else {}).items():
            try:
                source = None
                if sid in prophet_files:
                    source = _ProphetFile(folder, prophet_files[sid], sums.get(prophet_files[sid]))
                text = _read_checked(_inside(folder, name), None if sums is None else sums[name])
                forecasters[sid] = SeriesForecaster.from_json(text, source)
            except BundleIntegrityError:
                raise
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise BundleIntegrityError(f"{folder / name}: cannot load the model of {sid!r}: "
                                           f"{type(exc).__name__}: {exc}") from exc
        if prophet == "eager":
            for model in forecasters.values():
                model.model_  # noqa: B018 - parsed now, from the checked file
        for entity, name in manifest["detector_folders"].items():
            detectors[entity] = WorkloadAnomalyDetector.load(Path(_inside(folder, name)))
        return cls(manifest, forecasters, detectors)

    @property
    def alert_rule(self) -> AlertRule:
        """The rule the alarm levels were tuned under (the default for bundles before it)."""
        return AlertRule.from_dict(self.manifest.get("alert_rule"))

    @property
    def version_label(self) -> str:
        """What answered: the registry version when known, else the data fingerprint."""
        reg = self.manifest.get("registered_version")
        return f"{reg}" if reg else f"bundle-{self.manifest.get('data_fingerprint', '?')[:12]}"


class _ProphetFile:
    """A series' Prophet JSON in the bundle, parsed on first use after its checksum is checked.

    Checked then rather than on load: a 1-minute series' model is ~10 MB (its training history),
    so hashing every one at load would cost what parsing them did; its presence is checked on load.
    ``owner`` (a :class:`StoredForecasters`) keeps a training run's folder alive while a
    forecaster taken from it is; it does not travel to another process.
    """

    def __init__(self, folder: Path, name: str, sha256: str | None, owner: object = None):
        self.path, self.sha256, self.owner = _inside(folder, name), sha256, owner

    def json_text(self) -> str:
        return _read_checked(self.path, self.sha256)

    def __getstate__(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "owner": None}


class StoredForecasters(Mapping):
    """Forecasters kept as their bundle files in a folder, each parsed when asked for.

    Training writes each series' files as its task finishes (:meth:`add`) and keeps only their
    names, so its memory does not grow with the series count; ``bundle.save`` copies the files
    as they are. A forecaster asked for is parsed from its file (checksum checked when known)
    and not kept, but for the last few (a caller asking for the same one twice gets it once).
    """

    _RECENT = 4

    def __init__(self, folder: str | Path, files: dict[str, tuple[str, str | None]] | None = None,
                 sums: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.files = dict(files or {})  # series id -> (series file, Prophet file or None)
        self.sums = sums
        self._recent: OrderedDict[str, SeriesForecaster] = OrderedDict()

    def add(self, sid: str, series_json: str, prophet_json: str | None) -> None:
        """Write one series' files, named as ``bundle.save`` names them."""
        if sid in self.files:
            raise ValueError(f"{sid!r} is stored already")
        stem = file_stem(sid)
        names = (f"series/{stem}.json", None if prophet_json is None else f"prophet/{stem}.json")
        for name, text in zip(names, (series_json, prophet_json), strict=True):
            if name is None:
                continue
            path = self.folder / name
            if path.exists():  # a 80-bit hash collision: refuse rather than overwrite
                raise ValueError(f"{sid!r} maps to the file {name} of another series")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.files[sid] = names

    def __getitem__(self, sid: str) -> SeriesForecaster:
        if sid in self._recent:
            self._recent.move_to_end(sid)
            return self._recent[sid]
        series_file, prophet_file = self.files[sid]
        source = None
        if prophet_file is not None:
            source = _ProphetFile(self.folder, prophet_file, self._sum(prophet_file), owner=self)
        try:
            text = _read_checked(_inside(self.folder, series_file), self._sum(series_file))
            model = SeriesForecaster.from_json(text, source)
        except BundleIntegrityError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleIntegrityError(f"{self.folder / series_file}: cannot load the model of "
                                       f"{sid!r}: {type(exc).__name__}: {exc}") from exc
        self._recent[sid] = model
        if len(self._recent) > self._RECENT:
            self._recent.popitem(last=False)
        return model

    def copy(self, name: str, to: Path) -> None:
        """Copy one of the files (checked against its checksum when known) to ``to``."""
        source = _inside(self.folder, name)
        if os.path.abspath(source) == os.path.abspath(to):
            return
        if self.sums is None:
            shutil.copyfile(source, to)
        else:
            to.write_text(_read_checked(source, self._sum(name)), encoding="utf-8")

    def _sum(self, name: str) -> str | None:
        return None if self.sums is None else self.sums[name]

    def calibrations_of(self, sid: str) -> dict[float, ProbabilityCalibration]:
        """One series' calibrations by horizon, read from its file without parsing the model."""
        state = json.loads(_read_checked(_inside(self.folder, self.files[sid][0]),
                                         self._sum(self.files[sid][0])))
        return {float(h): ProbabilityCalibration.from_dict(c)
                for h, c in state.get("calibrations", {}).items()}

    def set_calibrations(self, sid: str, calibrations: dict[float, ProbabilityCalibration]) -> None:
        """Rewrite one series' calibrations in its file (a training run's own files only)."""
        if self.sums is not None:
            raise ValueError("a loaded bundle's files are checked against its manifest: "
                             "calibrations are set only while training writes them")
        path = _inside(self.folder, self.files[sid][0])
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        state["calibrations"] = {str(h): c.to_dict() for h, c in calibrations.items()}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(state, f)
        self._recent.pop(sid, None)

    def pool_alarm_levels(self, previous=None, timing=None) -> dict:
        """Shrink every series' alarm levels toward its previous model's and its metric kind's
        pooled level in this run (:func:`training.threshold.shrunk_toward_pools`), choosing each
        crossing-time quantile under the level served from ``timing`` (per series, its holdout's
        ``TimingEvidence`` by horizon), in place; returns the pools as the manifest records
        them: ``{kind: {horizon: PooledAlarm dict}}``."""
        fitted = {sid: self.calibrations_of(sid) for sid in self}
        smoothed, pools = shrunk_toward_pools(fitted, previous, timing)
        for sid, calibrations in smoothed.items():
            if calibrations != fitted[sid]:  # a file rewritten only when a level moved
                self.set_calibrations(sid, calibrations)
        out: dict[str, dict[str, dict]] = {}
        for (kind, h), pool in pools.items():
            out.setdefault(kind, {})[f"{h:g}"] = pool.to_dict()
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.files))  # the same order whichever task finished first

    def __len__(self) -> int:
        return len(self.files)

    def __contains__(self, sid: object) -> bool:
        return sid in self.files


class StoredDetectors(Mapping):
    """Anomaly detectors saved in a folder as each entity's task finished, loaded when asked for."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.names: dict[str, str] = {}  # entity -> its folder, as ``bundle.save`` names it

    def add(self, entity: str, detector: WorkloadAnomalyDetector) -> None:
        name = f"anomaly/{file_stem(entity)}"
        if entity in self.names or (self.folder / name).exists():
            raise ValueError(f"{entity!r} maps to the folder {name} of another entity")
        detector.save(self.folder / name)
        self.names[entity] = name

    def __getitem__(self, entity: str) -> WorkloadAnomalyDetector:
        return WorkloadAnomalyDetector.load(self.folder / self.names[entity])

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.names))

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, entity: object) -> bool:
        return entity in self.names


def _read_checked(path: str, sha256: str | None) -> str:
    """The file's text, read once and refused unless its SHA-256 is ``sha256`` (None: unchecked,
    bundles before schema 2)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BundleIntegrityError(f"{path}: listed in the manifest but missing") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise BundleIntegrityError(f"{path}: checksum does not match the manifest "
                                   "(the file was changed after the bundle was written)")
    return data.decode("utf-8")


def _verify_checksums(folder: Path, manifest: dict, lazy: set[str] = frozenset()) -> None:
    """Every file the manifest lists exists with its SHA-256, and every file read is listed.

    ``lazy`` files (the series and Prophet models) are only checked to exist here; their
    checksum is checked as they are read (:func:`_read_checked`).
    """
    sums = manifest.get("checksums")
    if not isinstance(sums, dict) or not sums:
        raise BundleIntegrityError(f"{folder}: manifest has no checksums; refusing to load")
    for name, want in sorted(sums.items()):
        path = _inside(folder, name)
        if not os.path.isfile(path):
            raise BundleIntegrityError(f"{path}: listed in the manifest but missing")
        if name not in lazy and _sha256(Path(path)) != want:
            raise BundleIntegrityError(f"{path}: checksum does not match the manifest "
                                       "(the file was changed after the bundle was written)")
    listed = set(sums)
    read = set(manifest.get("series_files", {}).values()) | set(lazy)
    for name in manifest.get("detector_folders", {}).values():
        read |= {f"{name}/{f}" for f in WorkloadAnomalyDetector.FILES}
    unlisted = sorted(read - listed)
    if unlisted:
        raise BundleIntegrityError(f"{folder}: files not covered by a checksum: {unlisted}")

"""The model bundle: a versioned folder with a manifest, a forecaster per series, a detector per entity."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path, PurePosixPath

from training.anomaly.detector import WorkloadAnomalyDetector
from training.forecast.forecaster import SeriesForecaster
from training.threshold import AlertRule

#: bump when the folder layout or a file format changes; loaders refuse newer versions.
#: 2: file names from a hash of the id, a SHA-256 of every file in the manifest, paths lossless
BUNDLE_SCHEMA_VERSION = 2
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


def _inside(folder: Path, name: str) -> Path:
    """``folder / name`` for a relative name that stays inside the bundle, else an error."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise BundleIntegrityError(f"{folder}: manifest names a file outside the bundle: {name!r}")
    return folder.joinpath(*rel.parts)


@dataclass
class ModelBundle:
    """Everything serving needs; ``manifest`` says how and on what data it was trained."""

    manifest: dict
    forecasters: dict[str, SeriesForecaster] = field(default_factory=dict)
    detectors: dict[str, WorkloadAnomalyDetector] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        """Write the bundle; every file's SHA-256 goes into ``manifest.json`` under ``checksums``."""
        folder = Path(folder)
        (folder / "series").mkdir(parents=True, exist_ok=True)
        manifest = dict(self.manifest, schema_version=BUNDLE_SCHEMA_VERSION,
                        libraries=library_versions())
        manifest.pop("registered_version", None)  # the registry says it on load, not the files
        manifest["series_files"], manifest["detector_folders"] = {}, {}
        names: dict[str, str] = {}
        for kind, items in (("series", self.forecasters), ("anomaly", self.detectors)):
            for key in sorted(items):
                name = f"{kind}/{file_stem(key)}"
                if name in names:  # a 80-bit hash collision: refuse rather than overwrite
                    raise ValueError(f"{key!r} and {names[name]!r} map to the same file {name}")
                names[name] = key
                if kind == "series":
                    (folder / f"{name}.json").write_text(items[key].to_json())
                    manifest["series_files"][key] = f"{name}.json"
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
    def load(cls, folder: str | Path) -> ModelBundle:
        """Read a bundle, refusing any file that is missing or whose checksum does not match."""
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
        if got >= 2:
            _verify_checksums(folder, manifest)
        forecasters, detectors = {}, {}
        for sid, name in manifest["series_files"].items():
            try:
                forecasters[sid] = SeriesForecaster.from_json(_inside(folder, name).read_text())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise BundleIntegrityError(f"{folder / name}: cannot load the model of {sid!r}: "
                                           f"{type(exc).__name__}: {exc}") from exc
        for entity, name in manifest["detector_folders"].items():
            detectors[entity] = WorkloadAnomalyDetector.load(_inside(folder, name))
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


def _verify_checksums(folder: Path, manifest: dict) -> None:
    """Every file the manifest lists exists with its SHA-256, and every file read is listed."""
    sums = manifest.get("checksums")
    if not isinstance(sums, dict) or not sums:
        raise BundleIntegrityError(f"{folder}: manifest has no checksums; refusing to load")
    for name, want in sorted(sums.items()):
        path = _inside(folder, name)
        if not path.is_file():
            raise BundleIntegrityError(f"{path}: listed in the manifest but missing")
        if _sha256(path) != want:
            raise BundleIntegrityError(f"{path}: checksum does not match the manifest "
                                       "(the file was changed after the bundle was written)")
    listed = set(sums)
    read = set(manifest.get("series_files", {}).values())
    for name in manifest.get("detector_folders", {}).values():
        read |= {f"{name}/{f}" for f in WorkloadAnomalyDetector.FILES}
    unlisted = sorted(read - listed)
    if unlisted:
        raise BundleIntegrityError(f"{folder}: files not covered by a checksum: {unlisted}")

"""The model bundle: a versioned folder with a manifest, a forecaster per series, a detector per entity."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from training.anomaly import WorkloadAnomalyDetector
from training.forecast import SeriesForecaster
from training.threshold import AlertRule

#: bump when the folder layout or a file format changes; loaders refuse newer versions
BUNDLE_SCHEMA_VERSION = 1
LIBRARIES = ("prealert", "prophet", "scikit-learn", "polars", "numpy", "pandas", "mlflow")


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", key)


def library_versions() -> dict[str, str]:
    return {lib: version(lib) for lib in LIBRARIES}


@dataclass
class ModelBundle:
    """Everything serving needs; ``manifest`` says how and on what data it was trained."""

    manifest: dict
    forecasters: dict[str, SeriesForecaster] = field(default_factory=dict)
    detectors: dict[str, WorkloadAnomalyDetector] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        (folder / "series").mkdir(parents=True, exist_ok=True)
        manifest = dict(self.manifest, schema_version=BUNDLE_SCHEMA_VERSION,
                        libraries=library_versions())
        manifest["series_files"] = {}
        for sid, fc in sorted(self.forecasters.items()):
            name = f"series/{_file_name(sid)}.json"
            (folder / name).write_text(fc.to_json())
            manifest["series_files"][sid] = name
        manifest["detector_folders"] = {}
        for entity, det in sorted(self.detectors.items()):
            name = f"anomaly/{_file_name(entity)}"
            det.save(folder / name)
            manifest["detector_folders"][entity] = name
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        self.manifest = manifest
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ModelBundle:
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            raise ValueError(f"{folder}: not a model bundle (no manifest.json)")
        manifest = json.loads(path.read_text())
        got = manifest.get("schema_version")
        if not isinstance(got, int) or got > BUNDLE_SCHEMA_VERSION:
            raise ValueError(
                f"{folder}: bundle schema version {got!r} is not readable by this prealert "
                f"(reads up to {BUNDLE_SCHEMA_VERSION}); upgrade prealert or retrain"
            )
        forecasters = {
            sid: SeriesForecaster.from_json((folder / name).read_text())
            for sid, name in manifest["series_files"].items()
        }
        detectors = {
            entity: WorkloadAnomalyDetector.load(folder / name)
            for entity, name in manifest["detector_folders"].items()
        }
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

"""The pure predictor behind the service: a loaded bundle plus request-to-answer translation."""

from __future__ import annotations

import os
from pathlib import Path

from features import schema as s
from features.build import workload_of_pod
from serving.schemas import PredictRequest, PredictResponse
from training.bundle import ModelBundle
from training.predict import predict_series
from training.registry import load_champion

BUNDLE_ENV = "PREALERT_BUNDLE"

class UnknownSeries(LookupError):
    """The request names a series the model bundle has no model for."""


class Predictor:
    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle

    @classmethod
    def from_environment(cls) -> Predictor:
        """A bundle folder from ``PREALERT_BUNDLE`` if set, else the registry's ``@champion``."""
        folder = os.environ.get(BUNDLE_ENV)
        return cls(ModelBundle.load(Path(folder)) if folder else load_champion())

    @property
    def model_version(self) -> str:
        return self.bundle.version_label

    def resolve_series(self, req: PredictRequest) -> str:
        if req.series_id:
            sid = req.series_id
        else:
            spec = s.spec_for(req.metric)
            labels = req.labels
            entity = labels.get("service") or labels.get("workload")
            if not entity and labels.get("pod"):
                entity = workload_of_pod(labels["pod"])
            if spec.level == "node" or not entity:
                entity = entity or labels.get("node") or labels.get("host")
            if not entity:
                raise UnknownSeries(
                    f"cannot locate a series for metric {req.metric!r} with labels {labels}: "
                    "give 'service', a pod name of a known shape, or 'node'")
            sid = s.series_id(entity, req.metric)
        if sid not in self.bundle.forecasters:
            known = ", ".join(sorted(self.bundle.forecasters)[:20])
            raise UnknownSeries(f"no model for series {sid!r}; known series: {known}")
        return sid

    def predict(self, req: PredictRequest) -> PredictResponse:
        sid = self.resolve_series(req)
        spec = s.spec_for(s.split_series_id(sid)[1])
        threshold = req.threshold if req.threshold is not None else spec.threshold
        if threshold != threshold:  # NaN: unknown metric and no threshold given
            raise ValueError(f"metric of {sid!r} has no default threshold: send 'threshold'")
        p = predict_series(
            self.bundle, sid, threshold, req.direction or spec.direction, req.horizon_minutes,
            recent=[(o.ts, o.value) for o in req.recent], now=req.now, context=req.context,
        )
        return PredictResponse(**p.as_dict(), message=p.sentence())

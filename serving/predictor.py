"""The pure predictor behind the service: a loaded bundle plus request-to-answer translation."""

from __future__ import annotations

import os
from pathlib import Path

from features import schema as s
from features.build import workload_of_pod
from serving.schemas import PredictRequest, PredictResponse
from training.bundle import ModelBundle
from training.predict import predict_series

BUNDLE_ENV = "PREALERT_BUNDLE"
#: user input quoted back in an error message is cut to this many characters
ECHO_CHARS = 100


def shortened(text: object, limit: int = ECHO_CHARS) -> str:
    """``text`` as a string of at most ``limit`` characters, marked when cut."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line: its type when the message is empty, never a traceback."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return shortened(text, limit)


class UnknownSeries(LookupError):
    """The request names a series the model bundle has no model for."""


class ModelLoadError(RuntimeError):
    """The service has no model to answer with; the message says why in one line."""


class Predictor:
    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle

    @classmethod
    def from_environment(cls) -> Predictor:
        """A bundle folder from ``PREALERT_BUNDLE`` if set, else the registry's ``@champion``.

        Any failure to load becomes a ``ModelLoadError`` naming the source and the cause.
        """
        folder = os.environ.get(BUNDLE_ENV)
        if folder:
            try:
                return cls(ModelBundle.load(Path(folder)))
            except Exception as exc:
                raise ModelLoadError(f"cannot load the bundle folder {folder}: {one_line(exc)}") from exc
        # imported here: a bundle folder is served without importing mlflow (a large heap to collect)
        from training.registry import load_champion, tracking_uri

        try:
            return cls(load_champion())
        except LookupError as exc:  # no @champion: the message says what to do
            raise ModelLoadError(one_line(exc)) from exc
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load prealert@champion from {tracking_uri()}: {one_line(exc)}") from exc

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
                    f"cannot locate a series for metric {shortened(repr(req.metric))} with labels "
                    f"{shortened(labels)}: give 'service', a pod name of a known shape, or 'node'")
            sid = s.series_id(entity, req.metric)
        if sid not in self.bundle.forecasters:
            known = ", ".join(sorted(self.bundle.forecasters)[:20])
            raise UnknownSeries(f"no model for series {shortened(repr(sid))}; known series: "
                                f"{shortened(known, 300)}")
        return sid

    def predict(self, req: PredictRequest) -> PredictResponse:
        sid = self.resolve_series(req)
        spec = s.spec_for(s.split_series_id(sid)[1])
        threshold = req.threshold if req.threshold is not None else spec.threshold
        if threshold != threshold:  # NaN: unknown metric and no threshold given
            raise ValueError(f"metric of {shortened(repr(sid))} has no default threshold: send 'threshold'")
        p = predict_series(
            self.bundle, sid, threshold, req.direction or spec.direction, req.horizon_minutes,
            recent=[(o.ts, o.value) for o in req.recent], now=req.now, context=req.context,
        )
        return PredictResponse(**p.as_dict(), message=p.sentence())

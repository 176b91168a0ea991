"""The HTTP service: a thin BentoML class over the pure predictor; it reports the model version it serves."""

from __future__ import annotations

import logging

import bentoml
from bentoml.exceptions import InvalidArgument, NotFound, ServiceUnavailable

import serving.bentoml_fixes  # noqa: F401 - replaces BentoML's TimeoutMiddleware before the app is built
from serving.http_edge import HttpEdge
from serving.predictor import ModelLoadError, Predictor, UnknownSeries
from serving.schemas import PredictRequest, PredictResponse

logger = logging.getLogger("prealert.service")


@bentoml.service(name="prealert", traffic={"timeout": 60})
class PreAlert:
    """Minutes-to-threshold and anomaly scores from the ``@champion`` model bundle.

    Errors: every 4xx/5xx answer is ``{"error": {"code": ..., "message": ...}}``.
    """

    def __init__(self) -> None:
        # a model that cannot load leaves the worker up, answering 503 with the reason on /readyz,
        # instead of crashing it into BentoML's endless restart loop
        self.predictor: Predictor | None = None
        self.load_error: str | None = None
        try:
            self.predictor = Predictor.from_environment()
        except ModelLoadError as exc:
            self.load_error = str(exc)
            logger.error("no model to serve: %s", exc, exc_info=exc.__cause__)

    def __is_ready__(self) -> bool:
        return self.predictor is not None

    def _loaded(self) -> Predictor:
        if self.predictor is None:
            raise ServiceUnavailable(self.load_error or "no model loaded")
        return self.predictor

    @bentoml.api(route="/predict")
    def predict(self, request: PredictRequest, /) -> PredictResponse:
        """When will this series reach its threshold, how sure are we, and how odd is it now."""
        try:
            return self._loaded().predict(request)
        except UnknownSeries as exc:
            raise NotFound(str(exc)) from exc
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc

    @bentoml.api(route="/model")
    def model(self) -> dict:
        """Which model answers: registry version, training window, series and their model kinds."""
        predictor = self._loaded()
        m = predictor.bundle.manifest
        return {
            "model_version": predictor.model_version,
            "training_window": m.get("training_window"),
            "step": m.get("step"),
            "series": {sid: info["kind"] for sid, info in m.get("series", {}).items()},
        }


PreAlert.add_asgi_middleware(HttpEdge, models={"/predict": (PredictRequest, PredictResponse)})

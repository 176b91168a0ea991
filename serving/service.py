"""The HTTP service: a thin BentoML class over the pure predictor; it reports the model version it serves."""

from __future__ import annotations

import bentoml
from bentoml.exceptions import InvalidArgument, NotFound

from serving.predictor import Predictor, UnknownSeries
from serving.schemas import PredictRequest, PredictResponse


@bentoml.service(name="prealert", traffic={"timeout": 60})
class PreAlert:
    """Minutes-to-threshold and anomaly scores from the ``@champion`` model bundle."""

    def __init__(self) -> None:
        self.predictor = Predictor.from_environment()

    @bentoml.api(route="/predict")
    def predict(self, request: PredictRequest, /) -> PredictResponse:
        """When will this series reach its threshold, how sure are we, and how odd is it now."""
        try:
            return self.predictor.predict(request)
        except UnknownSeries as exc:
            raise NotFound(str(exc)) from exc
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc

    @bentoml.api(route="/model")
    def model(self) -> dict:
        """Which model answers: registry version, training window, series and their model kinds."""
        m = self.predictor.bundle.manifest
        return {
            "model_version": self.predictor.model_version,
            "training_window": m.get("training_window"),
            "step": m.get("step"),
            "series": {sid: info["kind"] for sid, info in m.get("series", {}).items()},
        }

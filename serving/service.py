"""The HTTP service: a thin BentoML class over the pure predictor; it reports the model version it serves."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TypeVar

import anyio
import bentoml
from bentoml.exceptions import InvalidArgument, NotFound, ServiceUnavailable
from starlette.responses import Response

import serving.bentoml_fixes  # noqa: F401 - replaces BentoML's TimeoutMiddleware before the app is built
from serving import routes
from serving.http_edge import BODY_KEY, HttpEdge, access_log, error_json
from serving.predictor import BatchTooLarge, Predictor, SourceUnavailable, UnknownSeries
from serving.reload import ModelFollower
from serving.schemas import (
    AlertsRequest,
    AlertsResponse,
    PredictBatchRequest,
    PredictBatchResponse,
    PredictRequest,
    PredictResponse,
)

Answer = TypeVar("Answer")


#: what BentoML would do per request that prealert does not need (~40 % on top of the predictor's
#: own cost, measured with bench/serve_bench.py): its access log line (prealert's edge counts every
#: request in ``prealert_*`` metrics; ``PREALERT_ACCESS_LOG=1`` or ``prealert serve --access-log``
#: turns it back on), its traffic metrics middleware (the same counts again, and /metrics is served
#: by routes.py from the same multiprocess registry) and an OpenTelemetry span per request (no
#: exporter is configured; every URL is excluded, so the middleware passes through)
PER_REQUEST_OFF = {
    "logging": {"access": {"enabled": access_log()}},
    "metrics": {"enabled": False},
    "tracing": {"excluded_urls": [".*"]},
}


@bentoml.service(name="prealert", traffic={"timeout": 60}, **PER_REQUEST_OFF)
class PreAlert:
    """Minutes-to-threshold and anomaly scores from the ``@champion`` model bundle, which it follows
    (hot reload: every ``PREALERT_RELOAD_SECONDS``, on SIGHUP, on ``POST /admin/reload``).

    Errors: every 4xx/5xx answer is ``{"error": {"code": ..., "message": ...}}``.
    """

    def __init__(self) -> None:
        # a model that cannot load leaves the worker up, answering 503 with the reason on /readyz,
        # instead of crashing it into BentoML's endless restart loop; the follower keeps checking
        self._batch_lane: anyio.CapacityLimiter | None = None
        self.follower = ModelFollower()
        self.follower.load_first()
        self.follower.start()

    @property
    def predictor(self) -> Predictor | None:
        return self.follower.predictor

    @property
    def load_error(self) -> str | None:
        return self.follower.load_error

    def __is_ready__(self) -> bool:
        return self.predictor is not None

    def _answer(self, ask: Callable[[Predictor], Answer]) -> Answer:
        predictor = self.predictor  # read once: a reload swaps it whole, never mid-request
        if predictor is None:
            raise ServiceUnavailable(self.load_error or "no model loaded")
        try:
            return ask(predictor)
        except SourceUnavailable as exc:
            # BentoML hides a 5xx exception's message: the answer carries the reason itself
            return Response(error_json(503, str(exc), "source_unavailable"), status_code=503,
                            media_type="application/json")  # type: ignore[return-value]
        except UnknownSeries as exc:
            raise NotFound(str(exc)) from exc
        except BatchTooLarge as exc:
            raise InvalidArgument(str(exc), error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from exc
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc

    @bentoml.api(route="/predict")
    async def predict(self, request: PredictRequest, /) -> PredictResponse:
        """When will this series reach its threshold, how sure are we, and how odd is it now."""
        # answered on the event loop: ~1 ms of numpy costs less than the hop to a worker thread
        # and back (a sync API's path); a fetch from Prometheus, batches and /alerts keep the hop
        predictor = self.predictor
        if predictor is not None and predictor.fetches(request):
            return await anyio.to_thread.run_sync(self._answer, lambda p: p.predict(request))
        return self._answer(lambda p: p.predict(request))

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, ctx: bentoml.Context) -> PredictBatchResponse:
        """/predict for many series: each item answered or given its own error (body: PredictBatchRequest)."""
        # the body as it came (the edge read it; BentoML sees an empty one): the predictor validates
        # the items straight from it and writes the answer's JSON itself, a model object per item
        # costs ~30 ms a 1,000
        body = ctx.request.scope.get(BODY_KEY)
        if body is None:  # the edge is added below; BentoML's own request object has been read
            raise RuntimeError("the HTTP edge left no request body")
        if self._batch_lane is None:  # one batch at a time per worker, as BentoML's sync APIs run
            self._batch_lane = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(self._answer, lambda p: Response(
            p.predict_batch_json(body), media_type="application/json"), limiter=self._batch_lane)

    @bentoml.api(route="/alerts")
    def alerts(self, request: AlertsRequest, /) -> AlertsResponse:
        """The series predicted to cross within their catalogue rule's lead time, most urgent first."""
        return self._answer(lambda p: p.alerts(request))

    @bentoml.api(route="/model")
    def model(self) -> dict:
        """Which model answers: registry version, training window, series and their model kinds."""
        predictor = self._answer(lambda p: p)
        m = predictor.bundle.manifest
        return {
            "model_version": predictor.model_version,
            "training_window": m.get("training_window"),
            "step": m.get("step"),
            "series": {sid: info["kind"] for sid, info in m.get("series", {}).items()},
        }


PreAlert.mount_asgi_app(routes.app, path="/")
PreAlert.add_asgi_middleware(HttpEdge, routes=routes.DOCS, body_readers=("/predict_batch",), models={
    "/predict": (PredictRequest, PredictResponse),
    "/predict_batch": (PredictBatchRequest, PredictBatchResponse),
    "/alerts": (AlertsRequest, AlertsResponse),
})

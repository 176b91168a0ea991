"""The routes BentoML's ``@api`` (POST only) cannot express: GET listings, status, the admin reload and
/metrics (BentoML's own metrics middleware and route are switched off: see service.py)."""

from __future__ import annotations

from typing import Any

import bentoml
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving.http_edge import error_json
from serving.schemas import RulesList, SeriesList, shortened

SERIES_FILTERS = {
    "metric": "Only this metric, e.g. jvm_heap_pct.",
    "entity": "Only this workload (service) or node.",
    "kind": "Only this model kind: prophet or linear.",
    "fallback": "true: only series served by the fallback model; false: only the others.",
}


class Status(BaseModel):
    """The model answering, the last reload and its error, and the garbage collector's full pauses."""

    model_version: str | None = Field(description="The model answering now.")
    source: str | None = Field(description="The registry version (or bundle folder hash) it came from.")
    load_error: str | None = Field(description="Why there is no model at all (the service answers 503).")
    reload_error: str | None = Field(
        description="Why the last reload failed; the model in model_version keeps answering.")
    reload_interval_seconds: float = Field(description="Seconds between registry checks (0: only on demand).")
    reloads: int = Field(description="Models swapped in since the start.")
    signalled_checks: int = Field(description="Checks a SIGHUP asked for.")
    last_check: float | None = Field(description="Unix time of the last check of the registry.")
    gc: dict[str, Any] = Field(description="Full (generation-2) collections of this worker: count, "
                               "total and max pause in ms, objects frozen out of them.")
    prometheus_source: dict[str, Any] | None = Field(
        None, description="The Prometheus source giving the recent window to requests that send "
        "none (PREALERT_PROMETHEUS_URL): its URL, rules, cache TTL, window, step, and this "
        "worker's range queries and cache hits; null when none is configured.")


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def _bad(message: str) -> Response:
    return Response(error_json(400, message), status_code=400, media_type="application/json")


async def series(request: Request) -> Response:
    params = dict(request.query_params)
    unknown = sorted(set(params) - set(SERIES_FILTERS))
    if unknown:
        return _bad(f"unknown filter(s) {shortened(unknown)}; known: {', '.join(SERIES_FILTERS)}")
    fallback = params.pop("fallback", None)
    if fallback not in (None, "true", "false"):
        return _bad(f"fallback: must be true or false, got {shortened(repr(fallback))}")
    predictor = bentoml.get_current_service().predictor
    return _json(predictor.series(**params, fallback=None if fallback is None else fallback == "true"))


async def rules(request: Request) -> Response:
    return _json(bentoml.get_current_service().predictor.rules())


def _status(follower: Any, status: dict) -> Status:
    source = follower.predictor.source if follower.predictor else None
    return Status(**status, prometheus_source=source.stats() if source else None)


async def status(request: Request) -> Response:
    follower = bentoml.get_current_service().follower
    return _json(_status(follower, follower.status()))


async def reload_now(request: Request) -> Response:
    follower = bentoml.get_current_service().follower
    return _json(_status(follower, await run_in_threadpool(follower.check, True)))


async def metrics(request: Request) -> Response:
    """prealert's metrics in Prometheus' text format: under ``bentoml serve`` every worker's, from
    BentoML's multiprocess directory, as BentoML's own /metrics route writes them; else (an
    in-process app) this process's registry."""
    import os

    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    if os.path.isdir(os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")):
        from bentoml._internal.container import BentoMLContainer

        text = await run_in_threadpool(BentoMLContainer.metrics_client.get().generate_latest)
    else:
        text = generate_latest()
    return Response(text, media_type=CONTENT_TYPE_LATEST)


app = Starlette(routes=[
    Route("/metrics", metrics, methods=["GET"]),
    Route("/series", series, methods=["GET"]),
    Route("/rules", rules, methods=["GET"]),
    Route("/status", status, methods=["GET"]),
    Route("/admin/reload", reload_now, methods=["POST"]),
])

#: the routes as the OpenAPI document shows them: path -> (method, response model, query parameters)
DOCS: dict[str, tuple[str, type, list[dict]]] = {
    "/series": ("get", SeriesList, [
        {"name": name, "in": "query", "required": False, "description": text,
         "schema": {"type": "string", **({"enum": ["true", "false"]} if name == "fallback" else {})}}
        for name, text in SERIES_FILTERS.items()]),
    "/rules": ("get", RulesList, []),
    "/status": ("get", Status, []),
    "/admin/reload": ("post", Status, []),
}

"""ASGI middleware at the service's HTTP edge: body limit, media type, one error shape, readiness, metrics."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from serving.predictor import shortened
from serving.schemas import ErrorResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("prealert.http")

MAX_BODY_ENV = "PREALERT_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: the model's APIs: JSON bodies only, counted in prealert's metrics, 503 while no model is loaded
API_PATHS = ("/predict", "/model")
READY_PATH = "/readyz"
OPENAPI_PATH = "/docs.json"
ERROR_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "unprocessable", 429: "too_many_requests",
    500: "internal_error", 503: "model_not_loaded", 504: "timeout",
}
DOCUMENTED_ERRORS = (400, 404, 413, 415, 500, 503)
VALIDATION_ERRORS_SHOWN = 5
UNEXPECTED = "unexpected server error; the server log has the details"


def max_body_bytes() -> int:
    """The request body limit: ``PREALERT_MAX_BODY_BYTES`` (a positive integer) or 4 MiB."""
    raw = os.environ.get(MAX_BODY_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BODY_BYTES
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"{MAX_BODY_ENV}={shortened(raw, 40)!s} is not a positive whole number of bytes")
    return int(raw)


def error_json(status: int, message: str, code: str | None = None) -> bytes:
    """The body of every error answer: ``{"error": {"code": ..., "message": ...}}``."""
    body = ErrorResponse(error={"code": code or ERROR_CODES.get(status, "error"), "message": message})
    return body.model_dump_json().encode()


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for err in errors[:VALIDATION_ERRORS_SHOWN]:
        where = ".".join(shortened(p, 40) for p in err.get("loc", ()))
        what = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {what}" if where else what)
    more = len(errors) - VALIDATION_ERRORS_SHOWN
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def error_message(status: int, body: bytes) -> str | None:
    """The message inside whatever error body BentoML or Starlette wrote; None if already ours."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip() or HTTPStatus(status).phrase
    if isinstance(data, list) and data and isinstance(data[0], dict):  # BentoML's 4xx: [{"error": ...}]
        data = data[0]
    if not isinstance(data, dict):
        return HTTPStatus(status).phrase
    err, detail = data.get("error"), data.get("detail")
    if isinstance(err, dict) and "code" in err:
        return None
    if isinstance(detail, list):  # pydantic validation errors
        return _validation_message(detail)
    if isinstance(detail, str):
        return detail
    return err if isinstance(err, str) else HTTPStatus(status).phrase


def openapi_30(schema: Any) -> Any:
    """A pydantic JSON Schema (2020-12) rewritten as an OpenAPI 3.0 schema object.

    ``X | None`` becomes ``nullable``, ``examples`` the one ``example``, numeric exclusive bounds
    the 3.0 boolean form, and BentoML's private ``root_input`` key goes.
    """
    if isinstance(schema, list):
        return [openapi_30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: openapi_30(v) for k, v in schema.items() if k not in ("root_input", "examples", "const")}
    for key in ("properties", "$defs"):  # maps of names to schemas, not schemas themselves
        if key in schema:
            out[key] = {name: openapi_30(sub) for name, sub in schema[key].items()}
    if "examples" in schema and isinstance(schema["examples"], list) and schema["examples"]:
        out["example"] = schema["examples"][0]
    if "const" in schema:
        out["enum"] = [schema["const"]]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(schema.get(bound), int | float) and not isinstance(schema[bound], bool):
            out[plain], out[bound] = schema[bound], True
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del out["anyOf"]
        out.update(rest[0] if len(rest) == 1 and "$ref" not in rest[0] else
                   {"allOf": rest} if len(rest) == 1 else {"anyOf": rest})
        out["nullable"] = True
    if "default" in out and out["default"] is None:
        out["nullable"] = True
    if out.get("nullable") and "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]  # an enum must list null itself for null to validate
    return out


def openapi_document(spec: dict, models: dict[str, tuple[type, type]], api_paths: tuple[str, ...] = API_PATHS,
                     ) -> dict:
    """BentoML's OpenAPI document made valid OpenAPI 3.0, with the APIs' request and response
    models as pydantic declares them (nullable fields included) and prealert's one error schema."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("InvalidArgument", "NotFound", "InternalServerError"):  # BentoML's, not used any more
        schemas.pop(name, None)
    ref = "#/components/schemas/{model}"

    def component(model: type) -> dict:
        raw = model.model_json_schema(ref_template=ref)
        schemas.update(openapi_30(raw.pop("$defs", {})))
        schemas[model.__name__] = openapi_30(raw)
        return {"$ref": ref.format(model=model.__name__)}

    error = {"content": {"application/json": {"schema": component(ErrorResponse)}}}
    for path, item in spec.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if path in models:
                request, response = models[path]
                operation["requestBody"]["content"] = {"application/json": {"schema": component(request)}}
                responses["200"]["content"] = {"application/json": {"schema": component(response)}}
            if path in api_paths:
                for status in DOCUMENTED_ERRORS:
                    responses[str(status)] = {"description": HTTPStatus(status).phrase, **error}
            elif path == READY_PATH:
                responses["503"] = {"description": HTTPStatus(503).phrase, **error}
            for answer in (operation.get("requestBody"), *responses.values()):
                for media in (answer or {}).get("content", {}).values():
                    if "schema" in media:
                        media["schema"] = openapi_30(media["schema"])
    spec["components"]["schemas"] = {name: openapi_30(s) for name, s in schemas.items()}
    return spec


def _load_error() -> str | None:
    """Why the running service has no model (None while loading, or when it has one)."""
    import bentoml

    try:
        service = bentoml.get_current_service()
    except Exception:  # outside a server (no service yet)
        return None
    return getattr(service, "load_error", None)


class _Metrics:
    """prealert's own request counters, created in the worker on first use (after BentoML sets
    ``PROMETHEUS_MULTIPROC_DIR``, which prometheus_client reads when its metrics are made)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.requests = Counter("prealert_requests", "Requests to prealert's APIs, by endpoint and status.",
                                ["endpoint", "status"])
        self.latency = Histogram(
            "prealert_request_duration_seconds", "Time to answer prealert's APIs, by endpoint.",
            ["endpoint"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))


class HttpEdge:
    """Guards every request before BentoML sees it and gives every error one JSON shape.

    - a body over ``max_body`` bytes: 413, before the body is parsed;
    - an API call with a body that is not JSON: 415 (BentoML would try multipart and crash);
    - ``/readyz`` and the APIs while the model failed to load: 503 with the reason;
    - every 4xx/5xx body, whoever wrote it: ``{"error": {"code", "message"}}``; a 500 says only
      that the server log has the details (BentoML logs the traceback);
    - ``/docs.json``: valid OpenAPI 3.0, with ``models`` (path -> request and response model) and
      the error schema as declared;
    - the APIs' requests, statuses and latency in ``/metrics`` (``prealert_*``).
    """

    def __init__(self, app: Callable, models: dict[str, tuple[type, type]] | None = None,
                 api_paths: tuple[str, ...] = API_PATHS, max_body: int | None = None):
        self.app = app
        self.models = models or {}
        self.api_paths = api_paths
        if max_body is None:
            try:
                max_body = max_body_bytes()
            except ValueError as exc:
                logger.error("%s; using %d bytes", exc, DEFAULT_MAX_BODY_BYTES)
                max_body = DEFAULT_MAX_BODY_BYTES
        self.max_body = max_body
        self._metrics: _Metrics | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path not in self.api_paths:
            await self._guarded(scope, receive, send)
            return
        started = time.perf_counter()
        status_seen: list[int] = [500]

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_counted)
        finally:
            metrics = self._metrics = self._metrics or _Metrics()
            metrics.requests.labels(path, str(status_seen[0])).inc()
            metrics.latency.labels(path).observe(time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == READY_PATH or path in self.api_paths:
            reason = _load_error()
            if reason:
                await _answer(send, 503, error_json(503, reason))
                return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _answer(send, 413, error_json(413, self._too_large()))
            return
        media_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if (path in self.api_paths and scope["method"] == "POST"
                and media_type not in ("application/json", "")):
            await _answer(send, 415, error_json(
                415, f"send the request as application/json, not {shortened(media_type, 60)}"))
            return
        body = await _read_body(receive, self.max_body)
        if body is None:
            await _answer(send, 413, error_json(413, self._too_large()))
            return
        await self._reshaping(scope, _replay(body, receive), send)

    def _too_large(self) -> str:
        return f"request body is larger than {self.max_body} bytes (the server's {MAX_BODY_ENV})"

    async def _reshaping(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, holding back error answers and the OpenAPI document to rewrite them."""
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def send_rewritten(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if (status >= 400 and scope["method"] != "HEAD") or (
                        scope["path"] == OPENAPI_PATH and status == 200):
                    held["start"] = message
                    return
            elif message["type"] == "http.response.body" and "start" in held:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start = held.pop("start")
                body = b"".join(chunks)
                if start["status"] == 200:
                    spec = openapi_document(json.loads(body), self.models, self.api_paths)
                    body = json.dumps(spec).encode()
                else:
                    body = _uniform(start, body)
                await send({**start, "headers": _with_json_headers(start.get("headers", []), body)})
                await send({"type": "http.response.body", "body": body})
                return
            held["sent"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_rewritten)
        except Exception:
            if held.get("sent"):  # the answer has begun: nothing can be said any more
                raise
            logger.exception("Unhandled error on %s [%s]", scope["path"], scope["method"])
            await _answer(send, 500, error_json(500, UNEXPECTED))


def _uniform(start: Message, body: bytes) -> bytes:
    status = start["status"]
    message = error_message(status, body)
    if message is None:
        return body
    if status == 500:  # never a stack trace or an exception's text to the client
        request_id = dict(start.get("headers", [])).get(b"x-bentoml-request-id", b"").decode()
        message = UNEXPECTED + (
            f" (request id {request_id})" if request_id else "")
    code = "bad_request" if status == 400 else None
    return error_json(status, shortened(message, 1000), code)


def _with_json_headers(headers: list, body: bytes) -> list:
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
    return [*kept, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": _with_json_headers([], body)})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it exceeds ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then defers to the client's."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

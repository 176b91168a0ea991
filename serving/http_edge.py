"""ASGI middleware at the service's HTTP edge: auth, body and concurrency limits, media type, one error
shape, readiness, metrics, the model version header."""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from serving.schemas import ErrorResponse, positive_int, shortened, validation_message

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("prealert.http")

MAX_BODY_ENV = "PREALERT_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_CONCURRENCY_ENV = "PREALERT_MAX_CONCURRENCY"
DEFAULT_MAX_CONCURRENCY = 32
TOKEN_ENV = "PREALERT_API_TOKEN"
TOKEN_FILE_ENV = "PREALERT_API_TOKEN_FILE"
ACCESS_LOG_ENV = "PREALERT_ACCESS_LOG"
VERSION_HEADER = b"x-prealert-model-version"
#: the ASGI scope key under which the edge leaves the request body it has read
BODY_KEY = "prealert.body"
#: the model's APIs: JSON bodies only, behind the token when one is set, counted in prealert's
#: metrics, 503 while no model is loaded; health, docs and /metrics stay open
API_PATHS = ("/predict", "/predict_batch", "/alerts", "/model", "/series", "/rules", "/status",
             "/admin/reload")
READY_PATH = "/readyz"
OPENAPI_PATH = "/docs.json"
ERROR_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
    401: "unauthorized", 413: "payload_too_large", 415: "unsupported_media_type", 422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error", 503: "model_not_loaded", 504: "timeout",
}
DOCUMENTED_ERRORS = (400, 401, 404, 413, 415, 500, 503)
UNEXPECTED = "unexpected server error; the server log has the details"


def max_body_bytes() -> int:
    """The request body limit: ``PREALERT_MAX_BODY_BYTES`` (a positive integer) or 4 MiB."""
    return positive_int(MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES, "bytes")


def max_concurrency() -> int:
    """API requests in progress at once per worker: ``PREALERT_MAX_CONCURRENCY`` or 32; more get 503."""
    return positive_int(MAX_CONCURRENCY_ENV, DEFAULT_MAX_CONCURRENCY, "requests")


def access_log() -> bool:
    """Whether BentoML's per-request access log is on: ``PREALERT_ACCESS_LOG`` (1/true/yes/on or
    0/false/no/off; off when unset: it costs a share of every request)."""
    raw = os.environ.get(ACCESS_LOG_ENV, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{ACCESS_LOG_ENV}={shortened(raw, 40)} is not one of 1, true, yes, on, 0, false, "
                     "no, off")


def api_token() -> str | None:
    """The bearer token the APIs require: ``PREALERT_API_TOKEN``, else the first line of the file
    ``PREALERT_API_TOKEN_FILE`` (a Kubernetes secret mount); None = no auth."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    path = os.environ.get(TOKEN_FILE_ENV, "").strip()
    if not token and path:
        try:
            token = open(path, encoding="utf-8").read().strip()  # noqa: SIM115 - read once
        except OSError as exc:
            raise ValueError(f"{TOKEN_FILE_ENV}={path}: cannot read the token ({exc.strerror})") from exc
        if not token:
            raise ValueError(f"{TOKEN_FILE_ENV}={path}: the file is empty")
    return token or None


def authorized(headers: dict[str, str], token: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (compared in constant time)."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def error_json(status: int, message: str, code: str | None = None) -> bytes:
    """The body of every error answer: ``{"error": {"code": ..., "message": ...}}``."""
    body = ErrorResponse(error={"code": code or ERROR_CODES.get(status, "error"), "message": message})
    return body.model_dump_json().encode()


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
        return validation_message(detail)
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
                     routes: dict[str, tuple[str, type, list[dict]]] | None = None) -> dict:
    """BentoML's OpenAPI document made valid OpenAPI 3.0, with the APIs' request and response
    models as pydantic declares them (nullable fields included) and prealert's one error schema.

    ``routes`` documents routes BentoML does not know (mounted apps): path -> (method, response
    model, query parameters)."""
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
    for path, (method, response, parameters) in (routes or {}).items():
        spec.setdefault("paths", {})[path] = {method: {
            "summary": (response.__doc__ or "").strip().split("\n")[0] or path,
            "parameters": parameters, "tags": ["Service APIs"],
            "responses": {"200": {"description": "OK",
                                  "content": {"application/json": {"schema": component(response)}}}}}}
    for path, item in spec.get("paths", {}).items():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if path in models:
                request, response = models[path]
                operation.setdefault("requestBody", {"required": True})["content"] = {
                    "application/json": {"schema": component(request)}}
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


def _service() -> Any:
    import bentoml

    try:
        return bentoml.get_current_service()
    except Exception:  # outside a server (no service yet)
        return None


def _load_error() -> str | None:
    """Why the running service has no model (None while loading, or when it has one)."""
    return getattr(_service(), "load_error", None)


def _model_version() -> str | None:
    """The version of the model answering now, for the response header."""
    predictor = getattr(_service(), "predictor", None)
    return getattr(predictor, "model_version", None)


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


_METRICS: list[_Metrics] = []


def _metrics() -> _Metrics:
    """The one set of prealert's metrics of this process (every edge instance counts into it)."""
    if not _METRICS:
        _METRICS.append(_Metrics())
    return _METRICS[0]


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
                 api_paths: tuple[str, ...] = API_PATHS, max_body: int | None = None,
                 routes: dict[str, tuple[str, type, list[dict]]] | None = None,
                 body_readers: tuple[str, ...] = ()):
        self.app = app
        #: APIs that read the body from the scope (``BODY_KEY``): BentoML gets an empty one, else
        #: it parses the whole body into the API's empty input model only to drop it (~2-4 ms of a
        #: 1,000-series /predict_batch)
        self.body_readers = body_readers
        self.models = models or {}
        self.routes = routes or {}
        self.api_paths = api_paths
        if max_body is None:
            try:
                max_body = max_body_bytes()
            except ValueError as exc:
                logger.error("%s; using %d bytes", exc, DEFAULT_MAX_BODY_BYTES)
                max_body = DEFAULT_MAX_BODY_BYTES
        self.max_body = max_body
        try:
            self.max_concurrency = max_concurrency()
        except ValueError as exc:
            logger.error("%s; using %d", exc, DEFAULT_MAX_CONCURRENCY)
            self.max_concurrency = DEFAULT_MAX_CONCURRENCY
        self.token = api_token()  # a bad token file fails the start: never serve open by mistake
        self.in_flight = 0

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
                version = _model_version()
                if version:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (VERSION_HEADER, version.encode())]}
            await send(message)

        try:
            if self.token is not None and not authorized(_headers(scope), self.token):
                await _answer(send_counted, 401, error_json(
                    401, "send the API token as 'Authorization: Bearer <token>'"),
                    [(b"www-authenticate", b'Bearer realm="prealert"')])
                return
            if self.in_flight >= self.max_concurrency:
                await _answer(send_counted, 503, error_json(
                    503, f"busy: {self.in_flight} requests in progress, the limit of this worker "
                    f"({MAX_CONCURRENCY_ENV}); retry shortly", "overloaded"), [(b"retry-after", b"1")])
                return
            self.in_flight += 1
            try:
                await self._guarded(scope, receive, send_counted)
            finally:
                self.in_flight -= 1
        finally:
            metrics = _metrics()
            metrics.requests.labels(path, str(status_seen[0])).inc()
            metrics.latency.labels(path).observe(time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == READY_PATH or path in self.api_paths:
            reason = _load_error()
            if reason:
                await _answer(send, 503, error_json(503, reason))
                return
        headers = _headers(scope)
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
        scope[BODY_KEY] = body  # an API may read the body as it came (see service.predict_batch)
        await self._reshaping(scope, _replay(b"" if path in self.body_readers else body, receive), send)

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
                    spec = openapi_document(json.loads(body), self.models, self.api_paths, self.routes)
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


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


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


async def _answer(send: Send, status: int, body: bytes, headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": _with_json_headers(headers or [], body)})
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

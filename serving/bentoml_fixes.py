"""BentoML 1.4 server behaviour prealert corrects from its own side: the per-request timeout's timer,
and a traceback logged as an error for every client mistake.

BentoML's ``TimeoutMiddleware`` (``bentoml/_internal/server/http/traffic.py``, 1.4.40) schedules
``loop.call_later(timeout, ...)`` for every request and never cancels it. Each timer holds a copy of the
request's context (its OpenTelemetry span and what that reaches) and the request's future until the
traffic timeout (60 s) runs out, so a busy worker keeps about a minute of finished requests alive and
every full garbage collection walks them (MEASUREMENTS.md: one connection, +188k objects in 9.4k
requests). ``PromptTimeoutMiddleware`` keeps the behaviour (a 504 when nothing was sent in time) but
runs the timer in an empty context and cancels it as soon as the request is done.

BentoML builds its app after importing ``serving.service``, and looks the middleware up in its module
at that moment: importing this module (once, from ``serving/service.py``) is what installs the
replacement. ``PREALERT_BENTOML_FIXES=off`` leaves BentoML's own middleware in place.

BentoML's endpoint wrapper (``_bentoml_impl/server/app.py``) calls ``log_exception`` for every
exception an API raises, 4xx included: each bad request (a threshold out of range, an unknown series)
put an ``ERROR`` line and a 30-line traceback in the server log, which is what log-based alerting
pages on. :func:`log_client_errors_briefly` logs a client error (a BentoML error below 500, a pydantic
validation error) as one ``INFO`` line with its status and message; a server error keeps BentoML's
``ERROR`` with the traceback.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

logger = logging.getLogger("prealert.bentoml_fixes")

FIXES_ENV = "PREALERT_BENTOML_FIXES"
#: BentoML's own middleware class, kept when it is replaced (for comparison and tests)
upstream_timeout_middleware: type | None = None
#: BentoML's own ``log_exception`` (an ERROR with the traceback), still used for server errors
upstream_log_exception: Callable[..., None] | None = None

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _time_out(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError)


class PromptTimeoutMiddleware:
    """A 504 when the app has sent nothing within ``timeout`` seconds; its timer ends with the request."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        # the timer needs nothing of the request: an empty context keeps the request's out of the loop
        timer = loop.call_later(self.timeout, _time_out, waiter, context=contextvars.Context())

        async def _send(message: Message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send))
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                resp = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504)
                await resp(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()


def log_client_errors_briefly(request: Any, exc_info: Any = True) -> None:
    """BentoML's ``log_exception`` (called inside the ``except``), one line for a client's mistake."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    exc = sys.exc_info()[1]
    status = (exc.error_code.value if isinstance(exc, BentoMLException)
              else 400 if isinstance(exc, ValidationError) else 500)
    if status < 500:
        logger.info("%s %s: %d %s", request.method, request.url.path, status, str(exc)[:200])
        return
    upstream_log_exception(request, exc_info)


def _replace(module_name: str, attr: str, ours: Any, left: str) -> tuple[bool, Any]:
    """Put ``ours`` in place of ``module_name.attr``: (done, what was there before, if it was not
    ours already). A BentoML without that module or name is left as it is, with a warning naming
    what stays (``left``)."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError:
        logger.warning("BentoML has no %s; %s", module_name, left)
        return False, None
    if not hasattr(module, attr):
        logger.warning("BentoML's %s has no %s; %s", module_name, attr, left)
        return False, None
    before = getattr(module, attr)
    if before is ours:
        return True, None
    setattr(module, attr, ours)
    return True, before


def install() -> bool:
    """Make BentoML build its apps with ``PromptTimeoutMiddleware`` and log a client's error in one
    line; False when the timeout fix was left alone (idempotent)."""
    if os.environ.get(FIXES_ENV, "").strip().lower() in {"off", "0", "false", "no"}:
        logger.info("%s is off: BentoML's TimeoutMiddleware and error logging stay", FIXES_ENV)
        return False
    global upstream_timeout_middleware, upstream_log_exception
    done, before = _replace("bentoml._internal.server.http.traffic", "TimeoutMiddleware",
                            PromptTimeoutMiddleware, "its request timeout is left as is")
    upstream_timeout_middleware = before or upstream_timeout_middleware
    _, before = _replace("_bentoml_impl.server.app", "log_exception", log_client_errors_briefly,
                         "client errors keep their tracebacks")
    upstream_log_exception = before or upstream_log_exception
    return done


install()

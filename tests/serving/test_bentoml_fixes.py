"""BentoML's per-request timeout, replaced from prealert's side: same 504, no finished request kept alive."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import weakref

import pytest

from serving import bentoml_fixes
from serving.bentoml_fixes import PromptTimeoutMiddleware

#: stands for what BentoML's outer middlewares put in the request context (an OpenTelemetry span)
request_span: contextvars.ContextVar[object] = contextvars.ContextVar("request_span")


class Span:
    """Something a request's context holds, watched through a weak reference."""


def upstream() -> type:
    from bentoml._internal.server.http import traffic

    assert bentoml_fixes.upstream_timeout_middleware is not None, "the fix was not installed"
    assert traffic.TimeoutMiddleware is PromptTimeoutMiddleware
    return bentoml_fixes.upstream_timeout_middleware


async def answer(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def serve(middleware, requests: int) -> tuple[list[weakref.ref], list[dict]]:
    """``requests`` requests through ``middleware``, each with its own span in its context."""
    refs, sent = [], []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    async def one_request():
        span = Span()
        refs.append(weakref.ref(span))
        request_span.set(span)
        await middleware({"type": "http", "path": "/predict"}, receive, send)

    for _ in range(requests):
        await asyncio.create_task(one_request())
    for _ in range(3):  # let the loop run the callbacks the last request left in its ready queue
        await asyncio.sleep(0)
    gc.collect()
    return refs, sent


@pytest.mark.parametrize(("which", "kept"), [("bentoml", True), ("prealert", False)])
def test_finished_requests_are_not_kept_alive_by_the_timer(which, kept):
    """BentoML's timer holds each finished request's context for the whole timeout; ours none."""
    cls = upstream() if which == "bentoml" else PromptTimeoutMiddleware

    async def run():
        refs, sent = await serve(cls(answer, timeout=60), requests=50)
        return sum(r() is not None for r in refs), sent  # counted while the 60 s timers would still run

    alive, sent = asyncio.run(run())
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200] * 50
    assert (alive == 50) if kept else (alive == 0), f"{alive} of 50 finished requests still alive"


def test_a_slow_request_still_gets_504():
    async def slow(scope, receive, send):
        await asyncio.sleep(5)

    async def run():
        _, sent = await serve(PromptTimeoutMiddleware(slow, timeout=0.05), requests=1)
        return sent

    sent = asyncio.run(run())
    assert sent[0]["status"] == 504
    assert b"Not able to process the request in 0.05 seconds" in sent[1]["body"]


def test_no_timer_outlives_its_request():
    async def run():
        await serve(PromptTimeoutMiddleware(answer, timeout=60), requests=20)
        loop = asyncio.get_running_loop()
        return [h for h in loop._scheduled if not h.cancelled()]  # asyncio's pending timers

    assert asyncio.run(run()) == []


def test_the_service_app_is_built_with_the_fix(monkeypatch, tmp_path):
    from serving.service import PreAlert

    monkeypatch.setenv("PREALERT_BUNDLE", str(tmp_path / "none"))  # the app builds without a model
    classes = [m.cls for m in PreAlert.to_asgi().user_middleware]
    assert PromptTimeoutMiddleware in classes
    assert upstream() not in classes


def test_off_switch_leaves_bentoml_alone(monkeypatch):
    from bentoml._internal.server.http import traffic

    original = upstream()
    monkeypatch.setattr(traffic, "TimeoutMiddleware", original)
    monkeypatch.setenv(bentoml_fixes.FIXES_ENV, "off")
    assert bentoml_fixes.install() is False
    assert traffic.TimeoutMiddleware is original
    monkeypatch.delenv(bentoml_fixes.FIXES_ENV)
    assert bentoml_fixes.install() is True
    assert traffic.TimeoutMiddleware is PromptTimeoutMiddleware


def test_a_client_error_is_one_line_not_an_error_with_a_traceback(client, caplog):
    """Through the service's real app: a 400 and a 404 log no ERROR and no traceback."""
    caplog.set_level(logging.DEBUG)
    bad = client.post("/predict", json={"series_id": "golden-app/jvm_heap_pct", "threshold": 120})
    unknown = client.post("/predict", json={"series_id": "nope/cpu_pct", "threshold": 90})
    assert (bad.status_code, unknown.status_code) == (400, 404), (bad.text, unknown.text)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text
    said = [r.getMessage() for r in caplog.records if r.name == "prealert.bentoml_fixes"]
    assert any("/predict: 400 threshold 120 is outside" in m for m in said), said
    assert any("/predict: 404 no model for series 'nope/cpu_pct'" in m for m in said), said


def test_a_server_error_keeps_bentomls_error_with_its_traceback(caplog):
    from _bentoml_impl.server import app
    from starlette.requests import Request

    assert app.log_exception is bentoml_fixes.log_client_errors_briefly, "the fix was not installed"
    request = Request({"type": "http", "method": "POST", "path": "/predict", "headers": [],
                       "query_string": b"", "server": ("127.0.0.1", 3000), "scheme": "http"})
    caplog.set_level(logging.INFO)
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        app.log_exception(request)
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage() == "Exception on /predict [POST]" and record.exc_info[0] is RuntimeError

"""Errors as RFC 9457 problem details (``application/problem+json``).

A service error becomes the status its class stands for (:mod:`mailqueue.errors`): 404
for what does not exist, 409 for a state conflict, 410 for content no longer kept, 503
while the queue does not answer, 400 for any other error a user can fix, with the field
it is about in ``errors``. aiohttp's own (a route that does not exist, a method it does
not take, a body too large) keep their status. Anything else is a bug: logged with its
traceback, answered 500 with one line and no traceback.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from mailqueue.errors import (
    ConflictError,
    GoneError,
    MailqueueError,
    NotFoundError,
    QueueError,
)

log = structlog.get_logger("mailqueue.api")

PROBLEM_TYPE = "application/problem+json"
# The problem type of each status: urn:mailqueue:problem:<slug>.
SLUGS = {400: "bad-request", 401: "unauthorized", 404: "not-found",
         405: "method-not-allowed", 409: "conflict", 410: "gone", 413: "too-large",
         415: "unsupported-media-type", 500: "internal", 503: "unavailable"}
TITLES = {400: "Bad request", 401: "Unauthorized", 404: "Not found",
          405: "Method not allowed", 409: "Conflict", 410: "Gone", 413: "Request too large",
          415: "Unsupported media type", 500: "Internal error", 503: "Queue unavailable"}


def problem_type(status: int) -> str:
    return f"urn:mailqueue:problem:{SLUGS.get(status, 'error')}"


def problem(status: int, detail: str, field: str | None = None,
            headers: dict[str, str] | None = None) -> web.Response:
    """A problem document: type, title, status, detail; ``errors`` names the field."""
    body: dict[str, Any] = {"type": problem_type(status),
                            "title": TITLES.get(status, "Error"), "status": status,
                            "detail": detail}
    if status == 400:
        body["errors"] = [{"field": field, "detail": detail}]
    return web.Response(text=json.dumps(body), status=status, headers=headers,
                        content_type=PROBLEM_TYPE)


def status_of(error: MailqueueError) -> int:
    """The HTTP status a service error stands for."""
    for kind, status in ((NotFoundError, 404), (ConflictError, 409), (GoneError, 410),
                         (QueueError, 503)):
        if isinstance(error, kind):
            return status
    return 400


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error under the API as a problem document."""
    try:
        return await handler(request)
    except MailqueueError as exc:
        return problem(status_of(exc), str(exc), exc.field)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem(exc.status, _http_detail(exc, request), headers=headers)
    except Exception:
        log.exception("api_internal_error", method=request.method, path=request.path)
        return problem(500, "internal error (see the server's log)")


def _http_detail(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 404:
        return f"no such route: {request.path} (see /api/v1/openapi.json)"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path} " \
               f"(allowed: {exc.headers.get('Allow', '-')})"
    return exc.reason

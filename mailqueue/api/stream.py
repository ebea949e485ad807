"""The event stream (``GET /api/v1/events``): Server-Sent Events from the
:class:`~mailqueue.events.EventHub`, and a ``counts`` event once a second.

The counts come from one read of the queue per second, shared by every subscriber, and
only while someone subscribes; a running rehearsal's progress comes with them. A stream
ends when its client goes away (aiohttp cancels its handler), when it falls too far
behind (the hub drops it and closes the connection), or when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from mailqueue.api.spec import Call
from mailqueue.errors import QueueError
from mailqueue.events import EVENT_NAMES, stamped
from mailqueue.service.messages import by_store, queue_report

if TYPE_CHECKING:
    from mailqueue.api.app import Api

log = structlog.get_logger("mailqueue.api")

COUNTS_EVERY = 1.0  # seconds between two counts events
KEEPALIVE = 15.0  # seconds of silence before a comment line keeps proxies from closing


async def counts(api: Api) -> dict[str, Any]:
    """The queue's counts now, as the ``counts`` event carries them."""
    now = api.ctx.now()
    report = await queue_report(api.ctx)
    oldest = None if report.oldest_pending is None else max(0.0, now - report.oldest_pending)
    return {**stamped("at", now), "recipients": report.by_state,
            "messages_pending": report.messages_pending, "bytes_pending": report.bytes_pending,
            "oldest_pending_seconds": oldest, "accepted": report.accepted,
            "delivered": report.delivered, "bounced": report.bounced,
            "deleted": report.deleted, "drain_rate_per_second": round(report.drain_rate, 3),
            "stores": by_store(report, api.ctx.stores),
            "blocked_stores": sorted(api.blocked())}


class CountsTicker:
    """Publishes ``counts`` once a second while the hub has subscribers, and the progress
    of a rehearsal while one runs."""

    def __init__(self, api: Api) -> None:
        self._api = api
        self._task: asyncio.Task[None] | None = None

    def ensure(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="api-counts")

    async def _run(self) -> None:
        hub = self._api.hub
        while hub.listening:
            try:
                hub.publish("counts", await counts(self._api))
            except QueueError as exc:
                log.warning("api_counts_unavailable", error=str(exc))
            for run in self._api.runs.runs():
                if run.state == "running":
                    hub.publish("rehearsal", run.view())
            await asyncio.sleep(COUNTS_EVERY)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def stream(api: Api, call: Call) -> web.StreamResponse:
    """Send the events the client asked for until it goes, lags or the server stops."""
    names = call.query.get("types") or EVENT_NAMES
    first = [api.hub.frame("hello", {**stamped("server_time", api.ctx.now()),
                                     "stores": api.ctx.stores})]
    if "counts" in names:
        first.append(api.hub.frame("counts", await counts(api)))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(call.request)
    sub = api.hub.subscribe(names)
    transport = call.request.transport
    if transport is not None:
        sub.on_drop = transport.abort
    api.ticker.ensure()
    try:
        frames = [f for f, name in zip(first, ("hello", "counts"), strict=False)
                  if name in names]
        while not (sub.dropped or sub.closed):
            await response.write(("".join(frames) or ": keep-alive\n\n").encode())
            frames = await sub.next_frames(KEEPALIVE)
        if sub.dropped:
            log.info("api_stream_dropped", peer=call.request.remote)
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        api.hub.unsubscribe(sub)
    return response

"""The API's aiohttp application, mounted by the admin endpoint under ``/api/v1``."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mailqueue.api.openapi import document
from mailqueue.api.problems import problems
from mailqueue.api.routes import ROUTES
from mailqueue.api.spec import Route, parse
from mailqueue.api.stream import CountsTicker
from mailqueue.events import EventHub
from mailqueue.service import Context
from mailqueue.service.rehearsals import RehearsalRuns


@dataclasses.dataclass
class Api:
    """What the handlers work with: the service context of the serving process, its
    event hub, its rehearsal runs, and the stores a window holds now."""

    ctx: Context
    hub: EventHub
    runs: RehearsalRuns
    blocked: Callable[[], frozenset[str]]
    token: str | None = None
    document: dict[str, Any] = dataclasses.field(default_factory=lambda: document(ROUTES))
    ticker: CountsTicker = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.ticker = CountsTicker(self)


def _bind(api: Api, route: Route) -> Callable[[web.Request], Any]:
    @functools.wraps(route.handler)
    async def handle(request: web.Request) -> web.StreamResponse:
        return await route.handler(api, await parse(route, request))
    return handle


def build_api(api: Api) -> web.Application:
    """The application serving every route of :data:`~mailqueue.api.routes.ROUTES`."""
    app = web.Application(middlewares=[problems])
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _bind(api, route))

    async def shutdown(_: web.Application) -> None:
        api.hub.close()  # open streams end, so the server's stop need not wait for them
        await api.ticker.close()
        await api.runs.close()

    app.on_shutdown.append(shutdown)
    return app

"""The admin HTTP endpoint (aiohttp): metrics, health, and mailbox access.

``/metrics`` (Prometheus text), ``/healthz`` (the process runs), ``/readyz`` (the queue
answers and SMTP is listening), ``GET /mailboxes/{address}/messages``: the delivered
messages of one mailbox as JSON, or ``503`` while the mailbox is closed (one decision, in
:mod:`mailqueue.access`): with ``Retry-After`` (the window's planned end) while its store is
inside an active maintenance window, as the upgrade notice promised, and while the node it
lives on is down; and ``POST /dovecot/policy``: the same decision for an IMAP or POP3
login, answered in Dovecot's auth-policy protocol (:mod:`mailqueue.access.dovecot`).
The JSON API (:mod:`mailqueue.api`) is mounted under ``/api/v1``. Off unless
``[admin]`` is configured; loopback by default; with ``token`` set, every path but the
health checks and the dashboard's page and files (:mod:`mailqueue.web`) needs
``Authorization: Bearer TOKEN`` (the API's event stream also takes
``?token=TOKEN``, for a browser's EventSource, which cannot set headers).
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hmac
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from mailqueue import web as dashboard
from mailqueue.access import Closed, mailbox_closed
from mailqueue.api import Api, build_api
from mailqueue.api.problems import problem
from mailqueue.clock import Clock
from mailqueue.config import AdminConfig, StoreConfig
from mailqueue.control.nodes import NodeState
from mailqueue.control.windows import WindowSet
from mailqueue.errors import QueueError
from mailqueue.mailbox.maildir import mailbox_path
from mailqueue.mailbox.router import Route, Router
from mailqueue.metrics import Metrics
from mailqueue.queue.store import QueueStore
from mailqueue.timeparse import format_time

log = structlog.get_logger("mailqueue.admin")

_OPEN_PATHS = ("/healthz", "/readyz")
API_PREFIX = "/api/v1"
# The one route that also takes the token as a query parameter (EventSource sends no
# headers); everywhere else a token in a URL would end up in logs and histories.
_QUERY_TOKEN_PATHS = (f"{API_PREFIX}/events",)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminServer:
    """Serves the admin endpoint until cancelled."""

    def __init__(self, config: AdminConfig, queue: QueueStore, metrics: Metrics, clock: Clock,
                 windows: Callable[[], WindowSet], stores: list[StoreConfig],
                 smtp_listening: Callable[[], bool | None],
                 nodes: Callable[[], Mapping[str, NodeState]] = dict,
                 api: Api | None = None) -> None:
        self.config = config
        self._api = api
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._windows = windows
        self._nodes = nodes  # the control plane's node states
        self._stores = {s.name: s for s in stores}
        self._router = Router(stores)
        self._smtp_listening = smtp_listening  # None: this process runs no SMTP
        self.port: int | None = None
        self.started = asyncio.Event()

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/mailboxes/{address}/messages", self.mailbox_messages)
        app.router.add_post("/dovecot/policy", self.dovecot_policy)
        dashboard.add_routes(app)
        if self._api is not None:
            app.add_subapp(API_PREFIX, build_api(self._api))
        return app

    async def run(self) -> None:
        # A client that goes away cancels its handler: an event stream waiting for its
        # next event then ends at once rather than at its next write.
        runner = web.AppRunner(self.make_app(), access_log=None, handler_cancellation=True)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
            server = site._server  # aiohttp exposes the bound port only here
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1]) if sockets else self.config.port
            log.info("admin_started", host=self.config.host, port=self.port,
                     token=bool(self.config.token))
            self.started.set()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self.config.token
        if token and not _is_open(request.path) and not _authorized(request, token):
            challenge = {"WWW-Authenticate": "Bearer"}
            if request.path.startswith(API_PREFIX + "/"):
                return problem(401, "missing or wrong token: send Authorization: Bearer "
                                    "TOKEN", headers=challenge)
            return _json({"error": "missing or wrong token"}, 401, challenge)
        return await handler(request)

    async def metrics(self, request: web.Request) -> web.Response:
        now = self._clock.now()
        try:
            report = await self._queue.report(now)
        except QueueError as exc:
            log.warning("metrics_queue_unavailable", error=str(exc))
            report = None
        self._metrics.refresh(report, self._windows(), now)
        return web.Response(body=self._metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; "
                                                     "charset=utf-8"})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, str] = {}
        try:
            await self._queue.capacity()
            checks["queue"] = "ok"
        except QueueError as exc:
            checks["queue"] = f"unavailable: {exc}"
        listening = self._smtp_listening()
        checks["smtp"] = "disabled" if listening is None else \
            "ok" if listening else "not listening"
        ready = checks["queue"] == "ok" and checks["smtp"] in ("ok", "disabled")
        return _json({"ready": ready, "checks": checks}, 200 if ready else 503)

    async def mailbox_messages(self, request: web.Request) -> web.Response:
        address = request.match_info["address"]
        route = self._router.route(address)
        if not isinstance(route, Route):
            return _json({"error": f"no such mailbox: {address} ({route})"}, 404)
        closed = mailbox_closed(self._stores[route.store], route.address, self._windows(),
                                self._nodes())
        if closed is not None:
            return _closed(closed)
        root = self._stores[route.store].mailbox_root
        if root is None:
            return _json({"error": f"the mailboxes of store {route.store!r} are on its "
                                   "servers, and it has no verify_path to read them from"},
                         404)
        box = mailbox_path(root, route.address)
        listed = await asyncio.to_thread(list_maildir, box)
        if listed is None and self._stores[route.store].mailboxes is None:
            return _json({"error": f"no such mailbox: {route.address}"}, 404)
        return _json(listed or [])


    async def dovecot_policy(self, request: web.Request) -> web.Response:
        """Dovecot's auth-policy request, made after the password was checked: ``status``
        0 lets the login go on, -1 refuses it with ``msg``, which the client shows (IMAP
        ``NO [ALERT]``, POP3 ``-ERR [AUTH]``)."""
        if request.query.get("command") != "allow":
            return _json({"status": 0})  # a report: nothing to decide
        try:
            body = await request.json()
            login = str(body["login"]).strip().lower()
        except (ValueError, KeyError, TypeError):
            return _json({"error": "expected a JSON object with a \"login\""}, 400)
        verdict = self._login_verdict(login)
        store, result = verdict[0], verdict[1]
        self._metrics.logins.labels(store or "", result).inc()
        log.info("mailbox_login", login=login, protocol=body.get("protocol"),
                 remote=body.get("remote"), store=store, result=result)
        if result == "allowed":
            return _json({"status": 0, "msg": ""})
        return _json({"status": -1, "msg": verdict[2]})

    def _login_verdict(self, login: str) -> tuple[str | None, str, str]:
        """(store, result, message) for a login as ``login``."""
        route = self._router.route(login)
        if not isinstance(route, Route):
            return None, "unknown", f"No mailbox here for {login}"
        closed = mailbox_closed(self._stores[route.store], route.address, self._windows(),
                                self._nodes())
        if closed is None:
            return route.store, "allowed", ""
        return route.store, closed.kind, closed.reason()


def _is_open(path: str) -> bool:
    """Whether ``path`` is served without the token (the health checks, the dashboard's
    page and files)."""
    return path in _OPEN_PATHS or dashboard.is_public(path)


def _authorized(request: web.Request, token: str) -> bool:
    """The request carries the token: as a bearer header, or as ``?token=`` where that is
    taken."""
    expected = token.encode()
    header = request.headers.get("Authorization", "")
    if hmac.compare_digest(header.encode(), b"Bearer " + expected):
        return True
    given = request.query.get("token") if request.path in _QUERY_TOKEN_PATHS else None
    return given is not None and hmac.compare_digest(given.encode(), expected)


def _closed(closed: Closed) -> web.Response:
    """``503`` saying why the mailbox is closed (and, for a window, until when)."""
    if closed.window is not None:
        end = closed.window.end
        return _json({"error": "mailbox maintenance", "window": closed.window.name,
                      "store": closed.store, "until": format_time(end),
                      "reason": closed.reason()}, 503,
                     {"Retry-After": formatdate(end, usegmt=True)})
    return _json({"error": "mailbox node down", "store": closed.store, "node": closed.node,
                  "reason": closed.reason()}, 503)


def list_maildir(box: Path) -> list[dict[str, Any]] | None:
    """Summaries of the messages in ``box`` (new/ and cur/); None if it does not exist."""
    if not box.is_dir():
        return None
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    found = []
    for folder in ("new", "cur"):
        try:
            names = sorted(os.listdir(box / folder))
        except FileNotFoundError:
            continue
        for name in names:
            path = box / folder / name
            try:
                with path.open("rb") as fp:
                    headers = parser.parse(fp)
                size = path.stat().st_size
            except FileNotFoundError:
                continue  # moved by a reader meanwhile
            found.append({"id": name, "folder": folder, "size": size,
                          "queue_id": headers.get("X-Mailqueue-Id"),
                          "from": _header(headers, "From"), "to": _header(headers, "To"),
                          "subject": _header(headers, "Subject"),
                          "date": _header(headers, "Date"),
                          "message_id": _header(headers, "Message-ID")})
    return found


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else str(value)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, headers=headers,
                        content_type="application/json")

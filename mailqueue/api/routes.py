"""The API's routes: each handler parses nothing itself (its :class:`~mailqueue.api.spec.
Route` declares what it takes), calls one service operation and answers JSON."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mailqueue.api.spec import Call, Route, Value
from mailqueue.control.nodes import NodeMode
from mailqueue.control.windows import Inbound
from mailqueue.events import EVENT_NAMES
from mailqueue.queue.values import Action, RecipientState
from mailqueue.service import messages, nodes, verify, windows
from mailqueue.service.rehearsals import REPORT_TYPES

if TYPE_CHECKING:
    from mailqueue.api.app import Api

ACTIONS = tuple(a.value for a in Action)
_ACTION = f"{{action:{'|'.join(ACTIONS)}}}"


def json_reply(data: Any, status: int = 200,
               headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, headers=headers,
                        content_type="application/json")


# --- meta -----------------------------------------------------------------------------------

async def check_auth(api: Api, call: Call) -> web.StreamResponse:
    return json_reply({"auth": "token" if api.token else "none"})


async def openapi(api: Api, call: Call) -> web.StreamResponse:
    return json_reply(api.document)


async def events(api: Api, call: Call) -> web.StreamResponse:
    from mailqueue.api.stream import stream

    return await stream(api, call)


# --- windows --------------------------------------------------------------------------------

async def list_windows(api: Api, call: Call) -> web.StreamResponse:
    now = api.ctx.now()
    found = await windows.list_windows(api.ctx)
    return json_reply({"windows": [windows.window_view(w, now) for w in found]})


async def get_window(api: Api, call: Call) -> web.StreamResponse:
    found = await windows.get_window(api.ctx, call.path["name"])
    return json_reply(windows.window_view(found, api.ctx.now()))


async def start_window(api: Api, call: Call) -> web.StreamResponse:
    started, created = await windows.start_window(api.ctx, call.path["name"], **call.body)
    return json_reply(windows.window_view(started, api.ctx.now()), 201 if created else 200)


async def end_window(api: Api, call: Call) -> web.StreamResponse:
    ended = await windows.end_window(api.ctx, call.path["name"])
    return json_reply(windows.window_view(ended, api.ctx.now()))


async def extend_window(api: Api, call: Call) -> web.StreamResponse:
    extended = await windows.extend_window(api.ctx, call.path["name"], **call.body)
    return json_reply(windows.window_view(extended, api.ctx.now()))


async def cancel_window(api: Api, call: Call) -> web.StreamResponse:
    cancelled = await windows.cancel_window(api.ctx, call.path["name"])
    return json_reply(windows.window_view(cancelled, api.ctx.now()))


async def window_drain(api: Api, call: Call) -> web.StreamResponse:
    return json_reply(await windows.drain_status(api.ctx, call.path["name"]))


# --- the queue ------------------------------------------------------------------------------

async def list_messages(api: Api, call: Call) -> web.StreamResponse:
    q = call.query
    page = await messages.list_messages(
        api.ctx, states=q.get("state", ()), store=q.get("store"), sender=q.get("sender"),
        recipient=q.get("recipient"), message_id=q.get("message_id"), text=q.get("q"),
        older_than=q.get("older_than"), newer_than=q.get("newer_than"),
        include_done=q.get("all", False), limit=q["limit"], cursor=q.get("cursor"))
    now = api.ctx.now()
    return json_reply({"messages": [messages.message_view(m, now) for m in page.messages],
                       "next_cursor": page.next_cursor})


async def get_message(api: Api, call: Call) -> web.StreamResponse:
    detail = await messages.show_message(api.ctx, call.path["queue_id"])
    return json_reply(messages.detail_view(detail, api.ctx.now()))


async def raw_message(api: Api, call: Call) -> web.StreamResponse:
    body = await messages.raw_message(api.ctx, call.path["queue_id"])
    return web.Response(body=body, content_type="message/rfc822")


async def message_action(api: Api, call: Call) -> web.StreamResponse:
    outcome = await messages.act(api.ctx, Action(call.path["action"]),
                                 [call.path["queue_id"]], call.body.get("reason"))
    return json_reply(messages.outcome_view(outcome))


async def queue_action(api: Api, call: Call) -> web.StreamResponse:
    ids, every = call.body.get("ids"), call.body.get("all", False)
    if every and ids is not None:
        raise api.ctx.invalid("ids", "give ids or all, not both")
    if not every and not ids:
        raise api.ctx.invalid("ids", "give one or more queue ids in ids, or all: true")
    outcome = await messages.act(api.ctx, Action(call.path["action"]),
                                 None if every else ids, call.body.get("reason"))
    return json_reply(messages.outcome_view(outcome))


async def queue_shape(api: Api, call: Call) -> web.StreamResponse:
    return json_reply(messages.shape_json(await messages.queue_shape(api.ctx)))


async def stats(api: Api, call: Call) -> web.StreamResponse:
    report = await messages.queue_report(api.ctx)
    return json_reply(messages.stats_view(api.ctx, report, api.ctx.now()))


# --- stores and nodes -----------------------------------------------------------------------

async def list_stores(api: Api, call: Call) -> web.StreamResponse:
    return json_reply({"stores": await nodes.list_stores(api.ctx)})


async def list_nodes(api: Api, call: Call) -> web.StreamResponse:
    return json_reply({"nodes": [nodes.node_view(n) for n in await nodes.list_nodes(api.ctx)]})


async def get_node(api: Api, call: Call) -> web.StreamResponse:
    return json_reply(nodes.node_view(await nodes.get_node(api.ctx, call.path["name"])))


async def set_node(api: Api, call: Call) -> web.StreamResponse:
    body = dict(call.body)
    changed = await nodes.set_node(api.ctx, call.path["name"], body.pop("mode"), **body)
    return json_reply(nodes.node_view(changed))


# --- verify and rehearsals ------------------------------------------------------------------

async def run_verify(api: Api, call: Call) -> web.StreamResponse:
    strict = call.query.get("strict", False)
    return json_reply(verify.verify_view(await verify.run_audit(api.ctx), strict))


async def start_rehearsal(api: Api, call: Call) -> web.StreamResponse:
    run = await api.runs.start(**call.body)
    return json_reply(run.view(), 202, {"Location": f"/api/v1/rehearsals/{run.id}"})


async def list_rehearsals(api: Api, call: Call) -> web.StreamResponse:
    return json_reply({"rehearsals": [run.view() for run in api.runs.runs()]})


async def get_rehearsal(api: Api, call: Call) -> web.StreamResponse:
    return json_reply(api.runs.get(call.path["id"]).view())


async def rehearsal_report(api: Api, call: Call) -> web.StreamResponse:
    return json_reply(await asyncio.to_thread(api.runs.report, call.path["id"]))


async def rehearsal_file(api: Api, call: Call) -> web.StreamResponse:
    path, content_type = await asyncio.to_thread(api.runs.report_file, call.path["id"],
                                                 call.path["file"])
    return web.FileResponse(path, headers={"Content-Type": content_type})


# --- the table ------------------------------------------------------------------------------

def _path(name: str, description: str, enum: tuple[str, ...] | None = None) -> Value:
    return Value(name, "string", description, required=True, enum=enum)


WINDOW = _path("name", "The window's name.")
QUEUE_ID = _path("queue_id", "The message's queue id.")
ACTION = _path("action", "The operator verb.", ACTIONS)
NODE = _path("name", "The node's name: STORE-N, e.g. basic-2.")
RUN = _path("id", "The rehearsal's id (r1, r2 ...).")
BOUNCE_REASON = Value("reason", "string", "For bounce: the diagnostic the sender's notice "
                      f"gives (default: {messages.DEFAULT_BOUNCE_REASON}).")

ROUTES: tuple[Route, ...] = (
    Route("GET", "/auth", check_auth, "Check the token (and whether one is needed).", "meta",
          "Auth", errors=(401,)),
    Route("GET", "/openapi.json", openapi, "This OpenAPI document.", "meta", "OpenApi"),
    Route("GET", "/events", events, "The live event stream (Server-Sent Events).", "meta",
          "EventStream", content_type="text/event-stream", errors=(400, 401),
          query=(Value("types", "strings", "Only these events (comma-separated or "
                       "repeated; default all).", enum=EVENT_NAMES),
                 Value("token", "string", "The bearer token, for clients that cannot set "
                       "headers (a browser's EventSource); accepted on this route only.")),
          description="Events: " + ", ".join(EVENT_NAMES) + ". Each has a JSON data line; "
                      "counts comes once a second. A client that falls 1000 events behind "
                      "is disconnected."),
    Route("GET", "/windows", list_windows, "Every window and its state.", "windows",
          "WindowList"),
    Route("GET", "/windows/{name}", get_window, "One window.", "windows", "Window",
          path_params=(WINDOW,), errors=(404,)),
    Route("POST", "/windows/{name}/start", start_window,
          "Start a window now (creating it when until or duration is given).", "windows",
          "Window", path_params=(WINDOW,), errors=(400, 404, 409),
          body=(Value("until", "time", "New end: RFC 3339, now, +2h, or a local time "
                      "with timezone."),
                Value("duration", "duration", "End after this long (seconds, or 48h, 2d)."),
                Value("stores", "strings", "Stores a new window covers (default: all)."),
                Value("inbound", "string", "Policy for new mail in a new window.",
                      enum=tuple(Inbound)),
                Value("timezone", "string", "IANA zone for local times.")),
          also=((201, "The window, created and started."),)),
    Route("POST", "/windows/{name}/end", end_window, "End an active window now.", "windows",
          "Window", path_params=(WINDOW,), body=(), errors=(404, 409)),
    Route("POST", "/windows/{name}/extend", extend_window, "Move a window's planned end.",
          "windows", "Window", path_params=(WINDOW,), errors=(400, 404, 409),
          body=(Value("until", "time", "New planned end."),
                Value("by", "duration", "Push the planned end by this long."),
                Value("timezone", "string", "IANA zone for a local until."))),
    Route("POST", "/windows/{name}/cancel", cancel_window, "Cancel a window.", "windows",
          "Window", path_params=(WINDOW,), body=(), errors=(404, 409)),
    Route("GET", "/windows/{name}/drain", window_drain,
          "How far an ended window's mail has drained.", "windows", "Drain",
          path_params=(WINDOW,), errors=(404, 409)),
    Route("GET", "/messages", list_messages, "Messages, oldest first, filtered and paged.",
          "queue", "MessagePage", errors=(400,), query=(
              Value("state", "strings", "A recipient in this state (repeatable).",
                    enum=tuple(RecipientState)),
              Value("store", "string", "A recipient in this store."),
              Value("sender", "string", "Sender contains this (case-insensitive)."),
              Value("recipient", "string", "A recipient contains this."),
              Value("message_id", "string", "The Message-ID contains this."),
              Value("q", "string", "The queue id, or contained in the Message-ID, the "
                    "sender or a recipient."),
              Value("older_than", "duration", "Received longer ago than this (2h)."),
              Value("newer_than", "duration", "Received less long ago than this."),
              Value("all", "boolean", "Include finished messages."),
              Value("limit", "integer", "Messages per page.", minimum=1,
                    maximum=messages.MAX_PAGE, default=100),
              Value("cursor", "string", "next_cursor of the page before."))),
    Route("GET", "/messages/{queue_id}", get_message,
          "One message: envelope, headers, per-recipient history.", "queue", "MessageDetail",
          path_params=(QUEUE_ID,), errors=(404,)),
    Route("GET", "/messages/{queue_id}/raw", raw_message, "The message as received.",
          "queue", "RawMessage", path_params=(QUEUE_ID,), errors=(404, 410),
          content_type="message/rfc822"),
    Route("POST", f"/messages/{{queue_id}}/{_ACTION}", message_action,
          "Hold, release, retry, delete or bounce one message.", "queue", "ActionResult",
          path_params=(QUEUE_ID, ACTION), body=(BOUNCE_REASON,), errors=(400, 404)),
    Route("POST", f"/queue/{_ACTION}", queue_action,
          "Hold, release, retry, delete or bounce messages (or every one not done).",
          "queue", "ActionResult", path_params=(ACTION,), errors=(400, 404),
          body=(Value("ids", "strings", "Queue ids."),
                Value("all", "boolean", "Every message not yet done."), BOUNCE_REASON)),
    Route("GET", "/queue/shape", queue_shape, "Undelivered messages per store and age "
          "(qshape).", "queue", "Shape"),
    Route("GET", "/stats", stats, "Counts by state and store, totals, drain rate.", "queue",
          "Stats"),
    Route("GET", "/stores", list_stores, "Every store and the window holding it.", "nodes",
          "StoreList"),
    Route("GET", "/nodes", list_nodes, "Every configured node and its state.", "nodes",
          "NodeList"),
    Route("GET", "/nodes/{name}", get_node, "One node.", "nodes", "Node",
          path_params=(NODE,), errors=(404,)),
    Route("PUT", "/nodes/{name}", set_node, "Set a node up, down, slow or flaky.", "nodes",
          "Node", path_params=(NODE,), errors=(400, 404),
          body=(Value("mode", "string", "The node's mode.", required=True,
                      enum=tuple(NodeMode)),
                Value("latency", "duration", "Added time per delivery (slow, flaky)."),
                Value("failure_rate", "number", "Share of deliveries that fail (flaky).",
                      minimum=0, maximum=1),
                Value("fail_next", "integer", "Fail this many deliveries (flaky).",
                      minimum=0))),
    Route("GET", "/verify", run_verify, "The conservation equation and every exception.",
          "verify", "Verify", query=(Value("strict", "boolean", "Also fail on one "
                                           "Message-ID accepted as several messages."),)),
    Route("POST", "/rehearsals", start_rehearsal, "Start a rehearsal in the background.",
          "rehearsals", "Rehearsal", status=202, errors=(400, 409),
          body=(Value("scenario", "string", "A scenario file on the server (relative to "
                      "its working directory)."),
                Value("scenario_toml", "string", "A scenario's TOML text."),
                Value("speed", "number", "Simulated seconds per real second.", minimum=0),
                Value("seed", "integer", "Seed for traffic and node faults."),
                Value("out", "string", "The report directory on the server."))),
    Route("GET", "/rehearsals", list_rehearsals, "This server's rehearsals, newest first.",
          "rehearsals", "RehearsalList"),
    Route("GET", "/rehearsals/{id}", get_rehearsal, "One rehearsal and its progress.",
          "rehearsals", "Rehearsal", path_params=(RUN,), errors=(404,)),
    Route("GET", "/rehearsals/{id}/report", rehearsal_report, "A finished rehearsal's "
          "report.", "rehearsals", "RehearsalReport", path_params=(RUN,),
          errors=(404, 409)),
    Route("GET", "/rehearsals/{id}/files/{file}", rehearsal_file,
          "One file of a rehearsal's report directory.", "rehearsals", "ReportFile",
          path_params=(RUN, _path("file", "The file's name (queue.png, series.csv ...).")),
          errors=(404,), content_type="application/octet-stream",
          more_types=tuple(sorted({t.split(";")[0] for t in REPORT_TYPES.values()}))),
)

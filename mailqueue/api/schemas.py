"""The JSON Schemas of the API's responses (OpenAPI components), matching what the
service's ``*_view`` functions return; the tests validate real responses against them."""

from __future__ import annotations

from typing import Any

from mailqueue.control.nodes import NodeMode
from mailqueue.control.windows import Inbound, WindowState
from mailqueue.queue.values import EventKind, RecipientState

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}


def null(schema: Schema) -> Schema:
    """``schema`` or null."""
    if "type" in schema and isinstance(schema["type"], str) and len(schema) == 1:
        return {"type": [schema["type"], "null"]}
    return {"oneOf": [schema, {"type": "null"}]}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def members(props: dict[str, Schema], open_ended: bool = False) -> Schema:
    """An object with exactly ``props``, all required (``open_ended``: more allowed)."""
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": open_ended}


def obj(**props: Schema) -> Schema:
    """:func:`members` with the properties as keywords."""
    return members(props)


def enum(values: Any) -> Schema:
    return {"type": "string", "enum": [str(v) for v in values]}


def counts_by(keys: Any) -> Schema:
    return {"type": "object", "additionalProperties": INTEGER,
            "propertyNames": enum(keys)}


TIME = {"type": "string", "description": "RFC 3339 with offset"}
EPOCH = {"type": "number", "description": "POSIX seconds"}
STATES = counts_by(RecipientState)

RECIPIENT = obj(address=STRING, store=STRING, state=enum(RecipientState), attempts=INTEGER,
                next_attempt=null(TIME), last_error=null(STRING))
MESSAGE_MEMBERS: dict[str, Schema] = {
    "queue_id": STRING, "arrival_time": TIME, "arrival_epoch": EPOCH, "age_seconds": NUMBER,
    "size": INTEGER, "sender": STRING, "message_id": null(STRING), "done": BOOLEAN,
    "auth_user": null(STRING), "tls": null(STRING), "recipients": array(RECIPIENT)}
CHANGE = obj(queue_id=STRING, address=STRING, before=STRING, after=STRING)
FINDING = obj(kind=STRING, queue_id=null(STRING), recipient=null(STRING),
              message_id=null(STRING), detail=STRING, paths=array(STRING))
STORE_TOTALS = counts_by(("delivered", "bounced", "deleted", "queued"))

COMPONENTS: dict[str, Schema] = {
    "Problem": {"type": "object", "description": "An RFC 9457 problem document.",
                "properties": {"type": STRING, "title": STRING, "status": INTEGER,
                               "detail": STRING,
                               "errors": array(obj(field=null(STRING), detail=STRING))},
                "required": ["type", "title", "status", "detail"]},
    "Auth": obj(auth=enum(("token", "none"))),
    "OpenApi": {"type": "object", "description": "This document."},
    "EventStream": {"type": "string", "description": "text/event-stream"},
    "Window": obj(
        name=STRING, state=enum(WindowState), stores=array(STRING), inbound=enum(Inbound),
        timezone=null(STRING), start=TIME, end=TIME, start_epoch=EPOCH, end_epoch=EPOCH,
        started_at=null(TIME), ended_at=null(TIME), started_at_epoch=null(EPOCH),
        ended_at_epoch=null(EPOCH), seconds_to_start=null(NUMBER),
        seconds_to_end=null(NUMBER)),
    "WindowList": obj(windows=array(ref("Window"))),
    "Drain": obj(window=STRING, since=TIME, since_epoch=EPOCH, stores=array(STRING),
                 remaining=INTEGER, held=INTEGER, delivered=INTEGER, bounced=INTEGER,
                 deleted=INTEGER, last_settled_epoch=null(EPOCH), rate_per_second=NUMBER,
                 eta_seconds=null(NUMBER), done=BOOLEAN),
    "Message": members(MESSAGE_MEMBERS),
    "MessagePage": obj(messages=array(ref("Message")), next_cursor=null(STRING)),
    "MessageDetail": members(MESSAGE_MEMBERS | {
        "client": obj(helo=STRING, peer=STRING), "headers": array(STRING),
        "history": array(obj(at=TIME, at_epoch=EPOCH, kind=enum(EventKind),
                             recipient=null(STRING), detail=null(STRING))),
        "raw_available": BOOLEAN}),
    "RawMessage": {"type": "string", "description": "The message as received."},
    "ActionResult": obj(action=STRING, changed=array(CHANGE), in_delivery=array(CHANGE),
                        unchanged=array(STRING), complete=BOOLEAN),
    "Shape": obj(buckets_minutes=array(STRING), stores={
        "type": "object", "additionalProperties": obj(total=INTEGER, buckets=array(INTEGER))}),
    "Stats": obj(
        at=TIME, at_epoch=EPOCH, recipients=STATES, messages_pending=INTEGER,
        bytes_pending=INTEGER, oldest_pending_seconds=null(NUMBER), messages_total=INTEGER,
        accepted=INTEGER, recipients_accepted=INTEGER, delivered=INTEGER, bounced=INTEGER,
        deleted=INTEGER, drain_rate_per_second=NUMBER, drain_rate_window_seconds=NUMBER,
        by_store={"type": "object", "additionalProperties": INTEGER},
        stores={"type": "object", "additionalProperties": STATES}),
    "StoreList": obj(stores=array(obj(
        name=STRING, kind=STRING, domains=array(STRING), nodes=array(STRING),
        window=null(STRING), inbound=null(enum(Inbound)), open=BOOLEAN))),
    "Node": obj(name=STRING, store=STRING, mode=enum(NodeMode), latency=NUMBER,
                failure_rate=NUMBER, fail_next=INTEGER, updated_at=null(TIME),
                updated_at_epoch=null(EPOCH)),
    "NodeList": obj(nodes=array(ref("Node"))),
    "Verify": obj(
        ok=BOOLEAN, passed=BOOLEAN, strict=BOOLEAN, equation=STRING, accepted=INTEGER,
        delivered=INTEGER, bounced=INTEGER, deleted=INTEGER, queued=INTEGER,
        unaccounted=INTEGER, intact=INTEGER,
        by_store={"type": "object", "additionalProperties": STORE_TOTALS},
        missing=array(FINDING), duplicated=array(FINDING), misplaced=array(FINDING),
        corrupted=array(FINDING), unexpected=array(FINDING), bounces=array(FINDING),
        deletions=array(FINDING), foreign_files=array(STRING),
        same_message_id=array(FINDING), unchecked_stores=array(STRING)),
    "Rehearsal": obj(
        id=STRING, scenario=STRING, source=STRING,
        state=enum(("running", "finished", "failed")), phase=STRING, speed=NUMBER,
        seed=INTEGER, started_at=TIME, finished_at=null(TIME), out=STRING,
        simulated_now=null(TIME), progress=NUMBER,
        sample=null(obj(at=TIME, depth=INTEGER, queued=INTEGER, delivered=INTEGER,
                        bounced=INTEGER, accepted=INTEGER, held=BOOLEAN)),
        figures=null({"type": "object"}), error=null(STRING), passed=null(BOOLEAN)),
    "RehearsalList": obj(rehearsals=array(ref("Rehearsal"))),
    "RehearsalReport": members({"figures": {"type": "object"},
                                "timeline": array({"type": "object"}),
                                "files": array(STRING)}, open_ended=True),
    "ReportFile": {"type": "string", "format": "binary"},
    # The data of the event stream's events.
    "CountsEvent": obj(
        at=TIME, at_epoch=EPOCH, recipients=STATES, messages_pending=INTEGER,
        bytes_pending=INTEGER, oldest_pending_seconds=null(NUMBER), accepted=INTEGER,
        delivered=INTEGER, bounced=INTEGER, deleted=INTEGER, drain_rate_per_second=NUMBER,
        stores={"type": "object", "additionalProperties": STATES},
        blocked_stores=array(STRING)),
}

"""The OpenAPI 3.1 document, generated from the route declarations and the response
schemas, so that it describes exactly the routes the server has."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailqueue import __version__
from mailqueue.api.problems import PROBLEM_TYPE, TITLES
from mailqueue.api.schemas import COMPONENTS, ref
from mailqueue.api.spec import Route

PREFIX = "/api/v1"
TAGS = {"meta": "The token check, this document, the event stream.",
        "windows": "Maintenance windows.", "queue": "Queued mail and the operator verbs.",
        "nodes": "Stores and their mailbox nodes.", "verify": "Proof of no loss.",
        "rehearsals": "Scenarios replayed in the background of the server."}


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The whole document: every route under ``/api/v1``, the schemas, the security."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(PREFIX + route.template, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailqueue", "version": __version__,
                 "description": "Watch and steer the queue, its windows and nodes, verify "
                                "that nothing was lost, and run rehearsals. Errors are "
                                "RFC 9457 problem documents."},
        "tags": [{"name": name, "description": text} for name, text in TAGS.items()],
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "[admin] token, when one is set."},
                "query_token": {"type": "apiKey", "in": "query", "name": "token",
                                "description": "The same token: on the event stream only."},
            },
        },
        "security": [{"bearer": []}, {}],
    }


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary,
                          "tags": [route.tag]}
    if route.description:
        op["description"] = route.description
    params = [{"name": v.name, "in": "path", "required": True, "description": v.description,
               "schema": v.schema("path")} for v in route.path_params]
    params += [{"name": v.name, "in": "query", "required": v.required,
                "description": v.description, "schema": v.schema("query"),
                **({"style": "form", "explode": True} if v.kind == "strings" else {})}
               for v in route.query]
    if params:
        op["parameters"] = params
    if route.body is not None:
        schema: dict[str, Any] = {
            "type": "object", "additionalProperties": False,
            "properties": {v.name: v.schema() | {"description": v.description}
                           for v in route.body}}
        required = [v.name for v in route.body if v.required]
        if required:
            schema["required"] = required
        op["requestBody"] = {"required": bool(required),
                             "content": {"application/json": {"schema": schema}}}
    content = {kind: {"schema": ref(route.response)}
               for kind in (route.content_type, *route.more_types)}
    op["responses"] = {str(route.status): {"description": route.summary, "content": content}}
    for status, text in route.also:
        op["responses"][str(status)] = {"description": text, "content": content}
    for status in sorted({*route.errors, 401}):
        op["responses"][str(status)] = {
            "description": TITLES[status],
            "content": {PROBLEM_TYPE: {"schema": ref("Problem")}}}
    if route.path == "/events":
        op["security"] = [{"bearer": []}, {"query_token": []}, {}]
    return op

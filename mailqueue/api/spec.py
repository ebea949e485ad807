"""Routes declared as data: method, path, handler, and the parameters and body members
each takes, with their types. The aiohttp router and the OpenAPI document are both built
from these declarations, and requests are parsed by them (a value that does not fit is a
400 naming it), so the three cannot disagree."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from mailqueue.errors import InvalidInputError

if TYPE_CHECKING:
    from mailqueue.api.app import Api

# A value's kind: how it is read from a query string or a JSON body, and its schema.
Kind = Literal["string", "integer", "number", "boolean", "strings", "duration", "time"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclasses.dataclass(frozen=True)
class Value:
    """A path or query parameter, or a member of a JSON body."""

    name: str
    kind: Kind
    description: str
    required: bool = False
    enum: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    default: Any = None

    def schema(self, where: str = "body") -> dict[str, Any]:
        """This value's JSON Schema (a query's durations and times are strings)."""
        base: dict[str, Any]
        if self.kind == "strings":
            item: dict[str, Any] = {"type": "string"}
            if self.enum:
                item["enum"] = list(self.enum)
            base = {"type": "array", "items": item}
        elif self.kind == "duration":
            base = {"type": "string"} if where != "body" else \
                {"oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}
        elif self.kind == "time":
            base = {"type": "string"}
        else:
            base = {"type": self.kind}
            if self.enum:
                base["enum"] = list(self.enum)
        for key in ("minimum", "maximum", "default"):
            if getattr(self, key) is not None:
                base[key] = getattr(self, key)
        return base


Handler = Callable[["Api", "Call"], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True)
class Route:
    """One operation of the API."""

    method: str
    path: str  # under /api/v1, with aiohttp's {name} or {name:regex} placeholders
    handler: Handler
    summary: str
    tag: str
    response: str  # the component schema of the success response (or a content type's)
    path_params: tuple[Value, ...] = ()
    query: tuple[Value, ...] = ()
    body: tuple[Value, ...] | None = None
    status: int = 200
    also: tuple[tuple[int, str], ...] = ()  # other success statuses, with what they mean
    errors: tuple[int, ...] = ()
    content_type: str = "application/json"
    more_types: tuple[str, ...] = ()  # other content types the success answer may have
    description: str = ""

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.strip("_")

    @property
    def template(self) -> str:
        """The path as OpenAPI writes it: ``{name}`` without aiohttp's regexes."""
        return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", self.path)


@dataclasses.dataclass(frozen=True)
class Call:
    """A request parsed by its route: path parameters, query and body, each checked."""

    request: web.Request
    path: dict[str, str]
    query: dict[str, Any]
    body: dict[str, Any]


def _invalid(name: str, message: str) -> InvalidInputError:
    return InvalidInputError(f"{name}: {message}", field=name)


def _check_enum(value: Value, item: str) -> None:
    if value.enum is not None and item not in value.enum:
        raise _invalid(value.name, f"{item!r} is not one of {', '.join(value.enum)}")


def _query_value(value: Value, given: list[str]) -> Any:
    """A query parameter's value from its occurrences in the query string."""
    if value.kind == "strings":
        items = [part.strip() for text in given for part in text.split(",") if part.strip()]
        for item in items:
            _check_enum(value, item)
        return items
    if len(given) > 1:
        raise _invalid(value.name, "give it once")
    text = given[0]
    if value.kind == "integer":
        try:
            number = int(text)
        except ValueError:
            raise _invalid(value.name, f"{text!r} is not a whole number") from None
        _check_range(value, number)
        return number
    if value.kind == "boolean":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise _invalid(value.name, f"{text!r} is not true or false")
    _check_enum(value, text)
    return text


def _check_range(value: Value, number: float) -> None:
    if value.minimum is not None and number < value.minimum:
        raise _invalid(value.name, f"{number!r} is below {value.minimum:g}")
    if value.maximum is not None and number > value.maximum:
        raise _invalid(value.name, f"{number!r} is above {value.maximum:g}")


def _body_value(value: Value, given: Any) -> Any:
    """A body member's value, checked against its kind."""
    kind = value.kind
    if kind in ("string", "time") or (kind == "duration" and isinstance(given, str)):
        if not isinstance(given, str):
            raise _invalid(value.name, "must be a string")
        _check_enum(value, given)
        return given
    if kind == "boolean":
        if not isinstance(given, bool):
            raise _invalid(value.name, "must be true or false")
        return given
    if kind == "strings":
        if not isinstance(given, list) or not all(isinstance(i, str) for i in given):
            raise _invalid(value.name, "must be a list of strings")
        return given
    if kind == "integer" and not (isinstance(given, int) and not isinstance(given, bool)):
        raise _invalid(value.name, "must be a whole number")
    if isinstance(given, bool) or not isinstance(given, int | float):
        raise _invalid(value.name, "must be a number" if kind != "duration" else
                       "must be a number of seconds or a duration such as \"2h\"")
    _check_range(value, given)
    return given


async def parse(route: Route, request: web.Request) -> Call:
    """Check the request against ``route``: path parameters, query (unknown ones refused),
    and the JSON body (an object; unknown members refused)."""
    path = dict(request.match_info)
    for value in route.path_params:
        _check_enum(value, path[value.name])
    query: dict[str, Any] = {}
    known = {v.name: v for v in route.query}
    for name in request.query:
        if name not in known:
            raise _invalid(name, f"unknown query parameter (known: "
                                 f"{', '.join(known) or 'none'})")
    for value in route.query:
        given = request.query.getall(value.name, [])
        if given:
            query[value.name] = _query_value(value, given)
        elif value.default is not None:
            query[value.name] = value.default
    body = await _parse_body(route, request)
    return Call(request, path, query, body)


async def _parse_body(route: Route, request: web.Request) -> dict[str, Any]:
    if route.body is None:
        return {}
    try:
        text = (await request.read()).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError("the body is not UTF-8 text", field="body") from None
    if not text.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidInputError(f"the body is not JSON: {exc}", field="body") from None
    if not isinstance(data, dict):
        raise InvalidInputError("the body must be a JSON object", field="body")
    members = {v.name: v for v in route.body}
    for name in data:
        if name not in members:
            raise _invalid(name, f"unknown member (known: {', '.join(members) or 'none'})")
    out: dict[str, Any] = {}
    for value in route.body:
        if data.get(value.name) is not None:
            out[value.name] = _body_value(value, data[value.name])
        elif value.required:
            raise _invalid(value.name, "is required")
    return out

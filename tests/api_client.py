"""A client of the HTTP API for the tests: real HTTP over TCP (aiohttp), and every answer
checked against the OpenAPI document the server serves (its status is one the document
lists for the route, its body fits that status's schema)."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import aiohttp
import jsonschema
from openapi_spec_validator import validate

PROBLEM = "application/problem+json"
# The OpenAPI documents (as served, byte for byte) found valid in this test process.
_VALID: set[bytes] = set()


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def data(self) -> Any:
        return json.loads(self.raw)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0]


class ApiClient:
    """``await client.get("/windows")``: the answer, checked against the document."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session = aiohttp.ClientSession()
        self.document: dict[str, Any] | None = None

    async def __aenter__(self) -> ApiClient:
        answer = await self.raw("GET", "/openapi.json")
        assert answer.status == 200, answer.raw
        self.document = answer.data
        if answer.raw not in _VALID:  # each document the servers serve is validated once
            validate(self.document)
            _VALID.add(answer.raw)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def raw(self, method: str, path: str, body: Any = None, data: bytes | None = None,
                  headers: dict[str, str] | None = None) -> Answer:
        async with self.session.request(
                method, self.base + "/api/v1" + path, headers={**self.headers, **(headers or {})},
                json=body, data=data) as response:
            return Answer(response.status, dict(response.headers), await response.read())

    async def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Answer:
        answer = await self.raw(method, path, body, **kwargs)
        self.check(method, path, answer)
        return answer

    async def get(self, path: str) -> Answer:
        return await self.call("GET", path)

    async def post(self, path: str, body: Any = None) -> Answer:
        return await self.call("POST", path, body)

    async def put(self, path: str, body: Any = None) -> Answer:
        return await self.call("PUT", path, body)

    def check(self, method: str, path: str, answer: Answer) -> None:
        """The answer is one the document describes for this route."""
        assert self.document is not None
        assert answer.status != 500, answer.raw
        operation = self.operation(method, path.split("?")[0])
        if operation is None or (answer.status in (404, 405) and
                                 str(answer.status) not in operation["responses"]):
            # no such route (a path parameter outside its enum, say): a problem saying so
            assert answer.status in (404, 405) and answer.content_type == PROBLEM, answer
            jsonschema.validate(answer.data, self.schema({"$ref": "#/components/schemas/"
                                                                  "Problem"}))
            return
        responses = operation["responses"]
        assert str(answer.status) in responses, (method, path, answer.status, answer.raw)
        content = responses[str(answer.status)]["content"]
        assert answer.content_type in content, (answer.content_type, list(content))
        if answer.content_type in ("application/json", PROBLEM):
            jsonschema.validate(answer.data, self.schema(content[answer.content_type]["schema"]))

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        assert self.document is not None
        for template, operations in self.document["paths"].items():
            pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
            if re.fullmatch(pattern, "/api/v1" + path) and method.lower() in operations:
                found: dict[str, Any] = operations[method.lower()]
                return found
        return None

    def schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema`` with the document's components, so that its $refs resolve."""
        assert self.document is not None
        return {**schema, "components": self.document["components"]}

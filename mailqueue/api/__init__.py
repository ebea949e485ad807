"""The JSON HTTP API, ``/api/v1`` on the admin endpoint: windows, the queue, stores and
nodes, verify, rehearsals, a live event stream, and its OpenAPI document.

Every handler calls one operation of :mod:`mailqueue.service` (the command line calls the
same ones); routes are declared once (:mod:`~mailqueue.api.routes`) and both the router
and the OpenAPI document (:mod:`~mailqueue.api.openapi`) are built from them. Errors are
problem documents (:mod:`~mailqueue.api.problems`); the event stream is
:mod:`~mailqueue.api.stream`.
"""

from mailqueue.api.app import Api, build_api

__all__ = ["Api", "build_api"]

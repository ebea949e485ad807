"""The operations both doors share: the command line and the HTTP API call these functions
and hold no logic of their own.

Each operation is an ``async`` function taking a :class:`Context` (the config, an open
queue, a clock) and plain arguments, and returns plain values or the JSON-ready dicts
both doors print. It raises the typed errors of :mod:`mailqueue.errors`, which the CLI
turns into one line and an exit status and the API into a problem document and an HTTP
status: unknown names are :class:`~mailqueue.errors.NotFoundError`, state conflicts
:class:`~mailqueue.errors.ConflictError`, bad arguments name their ``field``.

Modules: :mod:`~mailqueue.service.windows`, :mod:`~mailqueue.service.messages` (the queue:
list, show, hold ... bounce, shape, stats), :mod:`~mailqueue.service.nodes` (stores and
nodes), :mod:`~mailqueue.service.verify`, :mod:`~mailqueue.service.rehearsals` (runs in the
serving process).
"""

from mailqueue.service.context import Context, Spelling, about

__all__ = ["Context", "Spelling", "about"]

"""What every service operation is given: the config, the open queue, a clock, and how
its caller spells the arguments an error message names."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from mailqueue.clock import Clock
from mailqueue.config import Config
from mailqueue.errors import InvalidInputError, MailqueueError
from mailqueue.queue.store import QueueStore

if TYPE_CHECKING:
    from mailqueue.events import EventHub

# How a caller names an operation's arguments in its messages: the CLI's options
# (``--for``), or the API's body members and query parameters as they are (``duration``).
Spelling = Mapping[str, str]


def _nothing() -> None:
    """No control plane to tell (a command run outside the server)."""


@dataclasses.dataclass(frozen=True)
class Context:
    """The parts an operation works with.

    ``spelling`` maps an argument's field name to the caller's name for it (absent: the
    field name itself). ``changed`` is called after a window or node changes, so a control
    plane in the same process rereads now rather than at its next poll. ``events``, in
    the serving process, hears what operator verbs did.
    """

    config: Config
    queue: QueueStore
    clock: Clock
    spelling: Spelling = dataclasses.field(default_factory=dict)
    changed: Callable[[], None] = _nothing
    events: EventHub | None = None

    def now(self) -> float:
        return self.clock.now()

    def name(self, field: str) -> str:
        """The caller's name for ``field``: ``--for`` on the command line."""
        return self.spelling.get(field, field)

    def invalid(self, field: str, message: str) -> InvalidInputError:
        """A usage error about ``field`` (build ``message`` with :meth:`name`)."""
        return InvalidInputError(message, field=field)

    @property
    def stores(self) -> list[str]:
        """The configured stores' names, in config order."""
        return [s.name for s in self.config.stores]



@contextlib.contextmanager
def about(field: str) -> Iterator[None]:
    """Name ``field`` in a :class:`~mailqueue.errors.MailqueueError` raised inside that
    names no field yet (a time that cannot be read is about ``until``)."""
    try:
        yield
    except MailqueueError as exc:
        if exc.field is None:
            exc.field = field
        raise

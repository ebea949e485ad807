"""The exceptions mailqueue raises.

Every error that is meant to reach a user derives from :class:`MailqueueError` and
carries a message that says what to fix::

    MailqueueError
    ├── ConfigError          a config file, key or environment override is invalid
    ├── TimeParseError       a time, duration or size could not be read
    ├── InvalidInputError    a request's arguments do not fit together or name nothing known
    ├── NotFoundError        what a request names does not exist
    │   ├── UnknownQueueIdError  a queue id
    │   ├── UnknownWindowError   a window name (also a WindowError)
    │   ├── UnknownNodeError     a node name (also a NodeError)
    │   └── UnknownRunError      a rehearsal run of the serving process
    ├── ConflictError        the request does not fit the current state
    │   ├── WindowStateError     a window in the wrong state (also a WindowError)
    │   └── RunInProgressError   a rehearsal is already running in the serving process
    ├── GoneError            what a request asks for is no longer kept (a done message's content)
    ├── WindowError          a window operation is not possible (unknown name, bad state)
    ├── NodeError            a name that is not one of the configured mailbox nodes
    ├── QueueError           the durable queue failed (wraps database errors)
    │   ├── QueueFullError   the queue is at its configured capacity, or its disk is full
    │   ├── QueueLostError   the queue file is no longer the one at its path (deleted, replaced)
    │   └── SchemaError      the queue database's schema is not at this version's revision
    ├── UsersError           the users file cannot be read or written, or a user name is invalid
    ├── MailLogError         a mail log cannot be read, is not a mail log, or (--strict) has a
    │                        line that is not one
    ├── ProfileError         a traffic profile file cannot be read or is not one
    └── DeliveryError        a mailbox store could not take a message
        ├── TemporaryDeliveryError   retry later (disk full, node down, a 4xx, ...)
        └── PermanentDeliveryError   give up and bounce (a 5xx, ...)

The command line prints any of them as one line (exit 2 for an :class:`InvalidInputError`,
as for a usage error; 1 for the others); the HTTP API answers them as problem details
(404 for :class:`NotFoundError`, 409 for :class:`ConflictError`, 410 for
:class:`GoneError`, 503 for :class:`QueueError`, 400 for the rest). An error about one
value of a request names it in ``field`` (``until``, ``stores``), so the API can say which.

A delivery error caused by what a remote mailbox server answered carries that answer
(:class:`RemoteReply`), so that a bounce can quote it.
"""

from __future__ import annotations

import dataclasses
import re

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")


class MailqueueError(Exception):
    """Base class of every error mailqueue reports to a user."""

    def __init__(self, *args: object, field: str | None = None) -> None:
        super().__init__(*args)
        # The request value the error is about (a body member, query or path parameter).
        self.field = field


class InvalidInputError(MailqueueError, ValueError):
    """A request's arguments do not fit together, or name a store that is not configured:
    a usage error on the command line."""


class NotFoundError(MailqueueError):
    """What a request names (a queue id, a window, a node, a rehearsal run) does not exist."""


class ConflictError(MailqueueError):
    """The request does not fit the current state (ending a window that is not active)."""


class GoneError(MailqueueError):
    """What a request asks for is no longer kept (the content of a message that is done)."""


class ConfigError(MailqueueError):
    """A configuration file, key or override is invalid."""


class TimeParseError(MailqueueError, ValueError):
    """A time, duration or size string could not be parsed."""


class WindowError(MailqueueError):
    """A maintenance-window operation is not possible."""


class UnknownWindowError(WindowError, NotFoundError):
    """No window of that name."""


class WindowStateError(WindowError, ConflictError):
    """The window is not in a state the operation applies to (ending one not active)."""


class NodeError(MailqueueError, ValueError):
    """A mailbox node name that is not one of the configured nodes, or a node mode
    without the setting it needs."""


class UnknownNodeError(NodeError, NotFoundError):
    """A name that is not one of the configured mailbox nodes."""


class UnknownRunError(NotFoundError):
    """No rehearsal run of that id in the serving process."""


class RunInProgressError(ConflictError):
    """A rehearsal is already running in the serving process."""


class QueueError(MailqueueError):
    """The durable queue failed; library errors are wrapped in it."""


class QueueFullError(QueueError):
    """The queue holds its configured maximum of messages or bytes, or has no disk space."""


class QueueLostError(QueueError):
    """The SQLite file the queue has open is no longer the one at its path: deleted,
    replaced by another file, or its directory is gone. What is written into it now is
    lost at the next start, so nothing is acknowledged until the file is back."""


class SchemaError(QueueError):
    """The queue database's schema revision is not the one this version needs."""


class UnknownQueueIdError(NotFoundError):
    """A queue id named by the user does not exist."""


class UsersError(MailqueueError):
    """The users file (``[smtp] users_file``) cannot be read or written, is not a users
    file, or a user name given is not one it can hold."""


class MailLogError(MailqueueError):
    """A mail log given to ``mailqueue traffic profile`` cannot be read, is not a Postfix or
    Exim log, or (with ``--strict``) holds a line that is not one; the message names the
    file and, for a line, its number."""


class ProfileError(MailqueueError):
    """A traffic profile file cannot be read, or is not one ``mailqueue traffic profile``
    wrote."""


@dataclasses.dataclass(frozen=True)
class RemoteReply:
    """A remote server's reply that decided a delivery: ``550 5.1.1 <a@b> User unknown``.

    ``mta`` names the server as a delivery status notification's ``Remote-MTA`` does (a
    host name or address); ``endpoint`` is where it was reached; ``command`` the command
    the reply answered (``RCPT TO``, ``end of data``, ...)."""

    mta: str
    endpoint: str
    code: int
    text: str  # the reply's lines joined by spaces, without the code
    command: str = ""

    @property
    def line(self) -> str:
        """The reply as one line: ``550 5.1.1 <a@b> User unknown``."""
        return f"{self.code} {self.text}".rstrip()

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 status code the reply starts with (``5.1.1``), if any."""
        match = _ENHANCED.match(self.text)
        return f"{match.group(1)}.{match.group(2)}.{match.group(3)}" if match else None

    def describe(self, kind: str) -> str:
        """``lmtp 127.0.0.1:24 said: 550 5.1.1 ... (in reply to RCPT TO)``."""
        after = f" (in reply to {self.command})" if self.command else ""
        return f"{kind} {self.endpoint} said: {self.line}{after}"


class DeliveryError(MailqueueError):
    """A mailbox store could not take a message; ``remote``: the server's reply that said
    so, when a remote server did."""

    def __init__(self, reason: str, *, remote: RemoteReply | None = None) -> None:
        super().__init__(reason)
        self.remote = remote


class TemporaryDeliveryError(DeliveryError):
    """The delivery should be retried later."""


class PermanentDeliveryError(DeliveryError):
    """The delivery can never succeed; the recipient is bounced."""

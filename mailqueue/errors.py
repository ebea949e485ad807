"""The exceptions mailqueue raises.

Every error that is meant to reach a user derives from :class:`MailqueueError` and
carries a message that says what to fix::

    MailqueueError
    ├── ConfigError          a config file, key or environment override is invalid
    ├── TimeParseError       a time, duration or size could not be read
    ├── WindowError          a window operation is not possible (unknown name, bad state)
    ├── NodeError            a name that is not one of the configured mailbox nodes
    ├── QueueError           the durable queue failed (wraps database errors)
    │   ├── QueueFullError   the queue is at its configured capacity, or its disk is full
    │   ├── QueueLostError   the queue file is no longer the one at its path (deleted, replaced)
    │   └── SchemaError      the queue database's schema is not at this version's revision
    ├── UnknownQueueIdError  a queue id does not exist
    ├── UsersError           the users file cannot be read or written, or a user name is invalid
    └── DeliveryError        a mailbox store could not take a message
        ├── TemporaryDeliveryError   retry later (disk full, node down, ...)
        └── PermanentDeliveryError   give up and bounce
"""

from __future__ import annotations


class MailqueueError(Exception):
    """Base class of every error mailqueue reports to a user."""


class ConfigError(MailqueueError):
    """A configuration file, key or override is invalid."""


class TimeParseError(MailqueueError, ValueError):
    """A time, duration or size string could not be parsed."""


class WindowError(MailqueueError):
    """A maintenance-window operation is not possible."""


class NodeError(MailqueueError, ValueError):
    """A mailbox node name that is not one of the configured nodes."""


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


class UnknownQueueIdError(MailqueueError):
    """A queue id named by the user does not exist."""


class UsersError(MailqueueError):
    """The users file (``[smtp] users_file``) cannot be read or written, is not a users
    file, or a user name given is not one it can hold."""


class DeliveryError(MailqueueError):
    """A mailbox store could not take a message."""


class TemporaryDeliveryError(DeliveryError):
    """The delivery should be retried later."""


class PermanentDeliveryError(DeliveryError):
    """The delivery can never succeed; the recipient is bounced."""

"""Tables of the durable queue (SQLAlchemy Core; the same schema on SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

messages = Table(
    "messages",
    metadata,
    Column("queue_id", String(32), primary_key=True),
    Column("mail_from", Text, nullable=False),
    Column("received_at", Double, nullable=False),
    Column("size", Integer, nullable=False),
    Column("message_id", Text),
    Column("digest", String(64), nullable=False),
    Column("helo", Text, nullable=False, server_default=""),
    Column("peer", Text, nullable=False, server_default=""),
    Column("rcpt_count", Integer, nullable=False),
    # Who sent it: the user an AUTH on its session proved, and the session's TLS protocol
    # and cipher (both NULL for a plain, anonymous session).
    Column("auth_user", Text),
    Column("tls", Text),
    Column("done_at", Double),
    # The raw message as received (CRLF line ends); cleared once every recipient is final.
    Column("body", LargeBinary),
)
Index("ix_messages_pending", messages.c.received_at,
      sqlite_where=text("done_at IS NULL"), postgresql_where=text("done_at IS NULL"))

recipients = Table(
    "recipients",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("queue_id", String(32), ForeignKey("messages.queue_id", ondelete="CASCADE"),
           nullable=False),
    Column("address", Text, nullable=False),
    Column("store", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Double, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", Double),
    Column("last_error", Text),
    Column("settled_at", Double),
)
# Claiming walks this index per store in due order: O(batch), whatever the queue depth.
Index("ix_recipients_due", recipients.c.store, recipients.c.state,
      recipients.c.next_attempt_at)
Index("ix_recipients_message", recipients.c.queue_id)
Index("ix_recipients_lease", recipients.c.lease_until,
      sqlite_where=text("state = 'active'"), postgresql_where=text("state = 'active'"))

windows = Table(
    "windows",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("stores", Text, nullable=False),  # comma-separated; empty = every store
    Column("start", Double, nullable=False),
    Column("end", Double, nullable=False),
    Column("state", String(16), nullable=False),
    Column("inbound", String(16), nullable=False),
    Column("timezone", String(64)),
    Column("started_at", Double),
    Column("ended_at", Double),
)

# Per-recipient history for `queue show`: attempts and their outcomes, operator actions,
# delay warnings and notices. Written in the same transaction as the change it records.
recipient_events = Table(
    "recipient_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("queue_id", String(32), ForeignKey("messages.queue_id", ondelete="CASCADE"),
           nullable=False),
    Column("recipient_id", Integer, ForeignKey("recipients.id", ondelete="CASCADE")),
    Column("at", Double, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", Text),
)
Index("ix_recipient_events_message", recipient_events.c.queue_id, recipient_events.c.at)
Index("ix_recipient_events_recipient", recipient_events.c.recipient_id, recipient_events.c.kind)

# Mailbox node states (rehearsals and fault drills): the control plane rereads them.
nodes = Table(
    "nodes",
    metadata,
    Column("name", String(160), primary_key=True),
    Column("store", String(128), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("latency", Double, nullable=False, server_default="0"),
    Column("failure_rate", Double, nullable=False, server_default="0"),
    Column("fail_next", Integer, nullable=False, server_default="0"),
    Column("version", Integer, nullable=False, server_default="0"),
    Column("updated_at", Double),
)

"""Alembic environment: migrations run on the connection mailqueue hands over.

The same migrations serve SQLite and PostgreSQL; on SQLite, changes that ALTER TABLE
cannot make are done in batch mode (copy, recreate, swap).
"""

from __future__ import annotations

from alembic import context

from mailqueue.queue.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
with context.begin_transaction():
    context.run_migrations()

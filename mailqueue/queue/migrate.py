"""Schema versions: Alembic migrations shipped in the package, checked at start-up.

The same migrations (``mailqueue/queue/migrations/versions``) serve SQLite and PostgreSQL.
Opening a queue checks the database's revision against the newest one:

- an **empty** database (none of the queue's tables) is created from ``schema.py`` and
  stamped with the newest revision — the Quick start and every test start this way;
- a database **at** the newest revision is used as it is;
- anything else (an older revision, a schema made before migrations existed, a revision
  this version does not know) is refused with one line saying what to do. Only
  ``mailqueue db upgrade`` migrates existing data.

``tests/integration/test_migrations.py`` checks that the migrations produce exactly the
schema in ``schema.py``. After changing ``schema.py``, generate the next migration with::

    python -m mailqueue.queue.migrate revision "add nodes table"

(it upgrades a scratch SQLite database to the newest revision and autogenerates the
difference into ``versions/NNNN_add_nodes_table.py``; review it, then commit it).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, text

from mailqueue.errors import SchemaError
from mailqueue.queue.schema import metadata

MIGRATIONS = Path(__file__).parent / "migrations"
# The core schema, as the first release created it without a version table.
FIRST_REVISION = "0001"
# Held while a PostgreSQL database is created or migrated, so that processes starting
# together against an empty database do not race each other's CREATE TABLE.
_SCHEMA_LOCK = 0x6D71_5343  # "mqSC"
UPGRADE_HINT = "run: mailqueue db upgrade -c CONFIG"


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    """An Alembic config for the packaged migrations, bound to ``connection``."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this version of mailqueue knows."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision is None:  # pragma: no cover - the package always ships migrations
        raise SchemaError("no schema migrations found in the package")
    return revision


def known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def current(conn: Connection) -> str | None:
    """The database's revision, or None when it has no version table."""
    return MigrationContext.configure(conn).get_current_revision()


def _has_queue_tables(conn: Connection) -> bool:
    return bool(set(inspect(conn).get_table_names()) & set(metadata.tables))


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})


def prepare(conn: Connection) -> None:
    """Create an empty database at the newest revision; refuse one that is not at it."""
    _lock(conn)
    revision, newest = current(conn), head()
    if revision == newest:
        return
    if revision is None and not _has_queue_tables(conn):
        metadata.create_all(conn)
        MigrationContext.configure(conn).stamp(ScriptDirectory.from_config(alembic_config()),
                                               newest)
        return
    if revision is None:
        raise SchemaError(f"queue schema has no version (made before migrations); "
                          f"{UPGRADE_HINT}")
    if revision not in known_revisions():
        raise SchemaError(f"queue schema is at revision {revision}, unknown to this "
                          f"mailqueue (newer?); upgrade mailqueue")
    raise SchemaError(f"queue schema is behind (revision {revision}, this mailqueue needs "
                      f"{newest}); {UPGRADE_HINT}")


def upgrade(conn: Connection, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate to ``revision``; (revision before, revision after)."""
    _lock(conn)
    before = current(conn)
    config = alembic_config(conn)
    if before is None and _has_queue_tables(conn):
        # Tables from before migrations existed: they are the first revision's.
        command.stamp(config, FIRST_REVISION)
    command.upgrade(config, revision)
    return before, current(conn)


def differences(conn: Connection) -> list[Any]:
    """What differs between the database and ``schema.py`` (empty when they agree)."""
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def new_revision(message: str) -> Path:
    """Autogenerate the next migration from the difference to ``schema.py``."""
    numbers = [int(m.group(1)) for p in (MIGRATIONS / "versions").glob("*.py")
               if (m := re.match(r"(\d{4})_", p.name))]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/scratch.db")
        with engine.begin() as conn:
            upgrade(conn)
            config = alembic_config(conn)
            config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
            script = command.revision(config, message=message, autogenerate=True,
                                      rev_id=rev_id)
        engine.dispose()
    if script is None or isinstance(script, list):  # pragma: no cover
        raise SchemaError("no revision generated")
    return Path(script.path)


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "revision":
        print("usage: python -m mailqueue.queue.migrate revision MESSAGE", file=sys.stderr)
        return 2
    print(new_revision(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

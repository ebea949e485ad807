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
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, create_engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

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
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


_REVISION = re.compile(r"^revision\s*=\s*['\"](\w+)['\"]", re.M)
_DOWN = re.compile(r"^down_revision\s*=\s*(.+)$", re.M)


def _scripts() -> dict[str, set[str]]:
    """Each packaged revision and the revisions it follows (read without importing
    Alembic: checking a queue at start-up stays cheap)."""
    graph: dict[str, set[str]] = {}
    for path in (MIGRATIONS / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        found, down = _REVISION.search(source), _DOWN.search(source)
        if found:
            graph[found.group(1)] = set(re.findall(r"['\"](\w+)['\"]",
                                                   down.group(1) if down else ""))
    return graph


def head() -> str:
    """The newest revision this version of mailqueue knows."""
    graph = _scripts()
    heads = set(graph) - {parent for parents in graph.values() for parent in parents}
    if len(heads) != 1:
        raise SchemaError(f"the packaged migrations have {len(heads)} heads "
                          f"({', '.join(sorted(heads))}); merge them into one")
    return heads.pop()


def known_revisions() -> set[str]:
    return set(_scripts())


def table_names(conn: Connection) -> set[str]:
    """The names of the database's tables."""
    return set(inspect(conn).get_table_names())


def current(conn: Connection, tables: Collection[str] | None = None) -> str | None:
    """The database's revision, or None when it has no version table. ``tables``: the
    database's table names, where the caller has read them already."""
    if "alembic_version" not in (table_names(conn) if tables is None else tables):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def holds_queue(conn: Connection, tables: Collection[str] | None = None) -> bool:
    """Whether the database has any of the queue's tables (at whatever revision)."""
    return bool(set(table_names(conn) if tables is None else tables) & set(metadata.tables))


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})


def prepare(conn: Connection, create: bool = True,
            tables: Collection[str] | None = None) -> bool:
    """Refuse a database that is not at the newest revision; with ``create``, make an empty
    one a queue at the newest revision first. False: the database is empty (and stays so,
    ``create`` being false). ``tables``: the database's table names, where the caller has
    read them already (they are read once either way)."""
    _lock(conn)
    if tables is None:
        tables = table_names(conn)
    revision, newest = current(conn, tables), head()
    if revision == newest:
        return True
    if revision is None and not holds_queue(conn, tables):
        if not create:
            return False
        from alembic import command

        metadata.create_all(conn)
        command.stamp(alembic_config(conn), newest)
        return True
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
    from alembic import command

    _lock(conn)
    before = current(conn)
    config = alembic_config(conn)
    if before is None and holds_queue(conn):
        # Tables from before migrations existed: they are the first revision's.
        command.stamp(config, FIRST_REVISION)
    command.upgrade(config, revision)
    return before, current(conn)


def differences(conn: Connection) -> list[Any]:
    """What differs between the database and ``schema.py`` (empty when they agree)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def new_revision(message: str) -> Path:
    """Autogenerate the next migration from the difference to ``schema.py``."""
    from alembic import command

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

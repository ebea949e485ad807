"""``mailqueue db``: the queue database's schema revision, and migrating it."""

from __future__ import annotations

import asyncio

import click

from mailqueue.cli._common import config_option
from mailqueue.config import load_config
from mailqueue.queue import migrate
from mailqueue.queue.sqlstore import SqlQueueStore


@click.group()
def db() -> None:
    """The queue database's schema: status and upgrade."""


@db.command("upgrade", short_help="Migrate the schema to this version's.")
@config_option
def db_upgrade(config_path: str | None) -> None:
    """Migrate the queue database to this version's schema (safe to repeat)."""
    store = SqlQueueStore(load_config(config_path).queue.url)
    before, after = asyncio.run(store.upgrade_schema())
    if before == after:
        click.echo(f"{store.safe_url}: schema already at revision {after}")
    else:
        click.echo(f"{store.safe_url}: schema upgraded from revision {before or 'none'} "
                   f"to {after}")


@db.command("status", short_help="Show the schema revision, and the needed one.")
@config_option
def db_status(config_path: str | None) -> None:
    """Show the database's schema revision and the one this version needs.

    Reads only: a database that holds no queue is an error, and nothing is created."""
    store = SqlQueueStore(load_config(config_path).queue.url)
    revision = asyncio.run(store.schema_revision())
    newest = migrate.head()
    state = "up to date" if revision == newest else "behind: run mailqueue db upgrade"
    if revision is None:
        state = "no version (made before migrations): run mailqueue db upgrade"
    click.echo(f"{store.safe_url}: revision {revision or 'none'}, this mailqueue needs "
               f"{newest}: {state}")

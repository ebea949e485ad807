"""Auditing a configured instance: its queue's ledger against its mailboxes' files."""

from __future__ import annotations

import asyncio

from mailqueue.config import Config
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import LedgerEntry
from mailqueue.verify.audit import Audit, audit
from mailqueue.verify.scan import iter_config, unchecked_stores


async def read_ledger(url: str) -> list[LedgerEntry]:
    """The ledger of the queue at ``url`` (which must exist: nothing is created)."""
    store = SqlQueueStore(url)
    await store.open(create=False)
    try:
        return await store.ledger()
    finally:
        await store.close()


def audit_ledger(config: Config, ledger: list[LedgerEntry]) -> Audit:
    """Compare ``ledger`` with the mailboxes of ``config``'s stores (reads files: blocking;
    read the ledger first, so a delivery in between is not missed)."""
    copies, roots = iter_config(config)
    return audit(ledger, copies, roots, unchecked_stores(config))


def audit_instance(config: Config) -> Audit:
    """Read the ledger, then the mailboxes: a blocking audit for scripts (the command and
    the API use :func:`mailqueue.service.verify.run_audit`)."""
    return audit_ledger(config, asyncio.run(read_ledger(config.queue.url)))

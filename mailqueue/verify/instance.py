"""Auditing a configured instance: its queue's ledger against its mailboxes' files."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailqueue.config import Config
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.store import QueueAudit
from mailqueue.verify.audit import Audit, Auditor
from mailqueue.verify.scan import iter_config, store_roots, unchecked_stores


async def audit_queue(config: Config, queue: QueueAudit) -> Audit:
    """Read ``queue``'s ledger, then the mailboxes of ``config``'s stores (after, so a
    delivery in between is not missed), and compare them: off the event loop, in bounded
    memory (an :class:`~mailqueue.verify.audit.Auditor`, its scratch file removed however
    the audit ends)."""
    roots = await asyncio.to_thread(_roots, config)
    auditor = Auditor(roots, unchecked_stores(config))  # its file is made when first fed
    try:
        await queue.read_ledger(lambda part: asyncio.to_thread(auditor.add_entries, part))
        return await asyncio.to_thread(_scan, auditor, config)
    finally:
        # Shielded: a second cancellation (Ctrl-C twice) still removes the file.
        await asyncio.shield(asyncio.to_thread(auditor.close))


def audit_instance(config: Config) -> Audit:
    """:func:`audit_queue` on the configured queue (which must exist: nothing is created),
    blocking: for scripts (the command and the API use
    :func:`mailqueue.service.verify.run_audit`)."""
    async def main() -> Audit:
        store = SqlQueueStore(config.queue.url)
        await store.open(create=False)
        try:
            return await audit_queue(config, store)
        finally:
            await store.close()

    return asyncio.run(main())


def _roots(config: Config) -> dict[str, Path]:
    return store_roots({s.name: root for s in config.stores
                        if (root := s.mailbox_root) is not None})


def _scan(auditor: Auditor, config: Config) -> Audit:
    copies, _ = iter_config(config)
    auditor.add_copies(copies)
    return auditor.result()

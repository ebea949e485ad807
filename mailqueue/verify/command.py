"""``mailqueue verify``: prove a served instance lost nothing and delivered nothing twice."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from mailqueue.cli_common import config_option
from mailqueue.config import Config, load_config
from mailqueue.queue.models import LedgerEntry
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.verify.audit import Audit, audit
from mailqueue.verify.scan import DeliveredCopy, scan_root
from mailqueue.verify.snapshot import Manifest, compare_snapshot, take_snapshot


async def read_ledger(url: str) -> list[LedgerEntry]:
    """The ledger of the queue at ``url`` (which must exist: nothing is created)."""
    store = SqlQueueStore(url)
    await store.open(create=False)
    try:
        return await store.ledger()
    finally:
        await store.close()


def scan_stores(config: Config) -> list[DeliveredCopy]:
    """Every file in every configured store's Maildirs (blocking)."""
    return [copy for s in config.stores for copy in scan_root(s.name, s.path)]


def audit_instance(config: Config) -> Audit:
    """Read the ledger, then the mailboxes (after, so a delivery in between is not missed)."""
    ledger = asyncio.run(read_ledger(config.queue.url))
    return audit(ledger, scan_stores(config))


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=1))


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--snapshot", "snapshot", metavar="FILE", type=click.Path(dir_okay=False,
              path_type=Path), help="Write a manifest of the mailbox files and digests.")
@click.option("--against", "against", metavar="FILE", type=click.Path(dir_okay=False,
              path_type=Path), help="Report mailbox files changed or missing since a snapshot.")
def verify(config_path: str | None, as_json: bool, snapshot: Path | None,
           against: Path | None) -> None:
    """Check that nothing accepted was lost or delivered twice.

    Prints the conservation equation (accepted = delivered + bounced + still queued, per
    recipient) and every exception; exits 1 on any loss, duplicate, corruption or
    unexplained file.
    """
    if snapshot and against:
        raise click.UsageError("give --snapshot or --against, not both")
    config = load_config(config_path)
    stores = {s.name: s.path for s in config.stores}
    if snapshot is not None:
        manifest = take_snapshot(stores)
        manifest.dump(snapshot)
        if as_json:
            _echo_json({"snapshot": str(snapshot), "files": len(manifest.files)})
        else:
            click.echo(f"snapshot: {len(manifest.files)} mailbox files in {len(stores)} "
                       f"stores written to {snapshot}")
        return
    if against is not None:
        before = Manifest.load(against)
        diff = compare_snapshot(before, take_snapshot(stores))
        _echo_json(diff.as_dict()) if as_json else click.echo(diff.report(before.created_at))
        _exit(diff.ok)
        return
    result = audit_instance(config)
    if as_json:
        _echo_json(result.as_dict())
    else:
        click.echo(result.report())
        click.echo("OK: nothing lost, nothing delivered twice" if result.ok else
                   "FAILED: see the exceptions above")
    _exit(result.ok)


def _exit(ok: bool) -> None:
    # SystemExit, not click's Exit: the CLI runs click with standalone_mode=False, where a
    # click Exit becomes a return value and the status would be lost.
    if not ok:
        sys.exit(1)

"""``mailqueue verify``: prove a served instance lost nothing and delivered nothing twice."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from mailqueue.cli._common import config_option, in_service
from mailqueue.config import load_config
from mailqueue.service.verify import run_audit, verdict, verify_json
from mailqueue.verify.snapshot import check_snapshot, write_snapshot


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=1))


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--snapshot", "snapshot", metavar="FILE", type=click.Path(dir_okay=False,
              path_type=Path), help="Write a manifest of the mailbox files and digests.")
@click.option("--against", "against", metavar="FILE", type=click.Path(dir_okay=False,
              path_type=Path), help="Report mailbox files changed or missing since a snapshot.")
@click.option("--strict", is_flag=True, help="Also fail when one Message-ID was accepted as "
              "several messages for one recipient.")
def verify(config_path: str | None, as_json: bool, snapshot: Path | None,
           against: Path | None, strict: bool) -> None:
    """Check that nothing accepted was lost or delivered twice.

    Prints the conservation equation (accepted = delivered + bounced + deleted + still
    queued, per recipient) and every exception; exits 1 on any loss, duplicate, misplaced
    copy, corruption or unexplained file. One Message-ID accepted as several messages for
    one recipient is listed for information (each was accepted and delivered once);
    --strict fails on it too.
    """
    if snapshot and against:
        raise click.UsageError("give --snapshot or --against, not both")
    config = load_config(config_path)
    stores = {s.name: root for s in config.stores if (root := s.mailbox_root) is not None}
    if snapshot is not None:
        files = write_snapshot(stores, snapshot)
        if as_json:
            _echo_json({"snapshot": str(snapshot), "files": files})
        else:
            click.echo(f"snapshot: {files} mailbox files in {len(stores)} stores written to "
                       f"{snapshot}")
        return
    if against is not None:
        created_at, diff = check_snapshot(against, stores)
        _echo_json(diff.as_dict()) if as_json else click.echo(diff.report(created_at))
        _exit(diff.ok)
        return
    result = in_service(config, run_audit, seed=False)
    if as_json:
        _echo_json(verify_json(result, strict))
    else:
        click.echo(result.report())
        if result.same_message_id:
            click.echo(result.notes())
        click.echo(verdict(result, strict))
    _exit(result.passed(strict))


def _exit(ok: bool) -> None:
    # SystemExit, not click's Exit: the CLI runs click with standalone_mode=False, where a
    # click Exit becomes a return value and the status would be lost.
    if not ok:
        sys.exit(1)

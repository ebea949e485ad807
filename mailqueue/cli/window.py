"""``mailqueue window list|start|end|extend|cancel``: see and change the maintenance windows
the queue database holds, so a running server follows them (the operations are
:mod:`mailqueue.service.windows`)."""

from __future__ import annotations

import json
import sys

import click

from mailqueue.cli._common import config_option, in_service, load
from mailqueue.clock import SystemClock
from mailqueue.control.windows import Inbound
from mailqueue.service import windows as service
from mailqueue.timeparse import format_duration, parse_duration


@click.group()
def window() -> None:
    """Maintenance windows: list, start, end, extend, cancel."""


@window.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per window.")
def window_list(config_path: str | None, as_json: bool) -> None:
    """Show every window and its state."""
    config = load(config_path)
    now = SystemClock().now()
    windows = in_service(config, service.list_windows)
    if not windows:
        click.echo("no windows")
    for w in windows:
        click.echo(json.dumps(service.window_json(w, now)) if as_json else w.describe(now))


def _stores(stores: str | None) -> list[str] | None:
    """The stores ``--stores A,B`` names; None when the option is absent."""
    if stores is None:
        return None
    return [s.strip() for s in stores.split(",") if s.strip()]


@window.command("start", short_help="Start window NAME now.")
@config_option
@click.argument("name")
@click.option("--until", metavar="TIME", help="New end: RFC 3339, 'now+...' as +2h, or local "
              "time with --timezone.")
@click.option("--for", "duration", metavar="DURATION", help="End after this long (48h, 2d).")
@click.option("--stores", metavar="A,B", help="Stores a new window covers (default: all).")
@click.option("--inbound", type=click.Choice([i.value for i in Inbound]),
              help="Policy for new mail in a new window (default: queue).")
@click.option("--timezone", metavar="ZONE", help="IANA zone for local times (America/Chicago).")
def window_start(config_path: str | None, name: str, until: str | None, duration: str | None,
                 stores: str | None, inbound: str | None, timezone: str | None) -> None:
    """Start window NAME now (creating it when --until or --for is given)."""
    config = load(config_path)
    started, _ = in_service(config, lambda ctx: service.start_window(
        ctx, name, until=until or None, duration=duration or None, stores=_stores(stores),
        inbound=inbound or None, timezone=timezone))
    click.echo(f"started {started.describe(SystemClock().now())}")


@window.command("end")
@config_option
@click.argument("name")
@click.option("--wait", is_flag=True, help="Show the drain's progress (remaining, rate, ETA) "
              "until the window's mail is delivered, then a summary.")
@click.option("--timeout", "wait_limit", metavar="DURATION", help="With --wait: stop waiting "
              "after this long (exit 3 if mail is still queued).")
def window_end(config_path: str | None, name: str, wait: bool, wait_limit: str | None) -> None:
    """End window NAME now; its stores' queued mail is delivered."""
    config = load(config_path)
    limit = parse_duration(wait_limit) if wait_limit else None
    if limit is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait")
    ended = in_service(config, lambda ctx: service.end_window(ctx, name))
    now = ended.ended_at or SystemClock().now()
    lasted = format_duration(now - (ended.started_at or ended.start))
    click.echo(f"ended {ended.name} after {lasted}; delivery of its queued mail begins")
    if wait:
        from mailqueue.cli._drain import watch_drain

        summary = in_service(config, lambda ctx: watch_drain(
            ctx.queue, service.drain_stores(ctx, ended), now, limit=limit))
        click.echo(summary.describe(ended.name))
        if summary.timed_out:
            sys.exit(3)


@window.command("extend")
@config_option
@click.argument("name")
@click.option("--until", metavar="TIME", help="New planned end: RFC 3339, 'now+...' as +2h, "
              "or local time with --timezone.")
@click.option("--by", "duration", metavar="DURATION", help="Push the planned end by this long.")
@click.option("--timezone", metavar="ZONE",
              help="IANA zone for a local --until time (America/Chicago).")
def window_extend(config_path: str | None, name: str, until: str | None, duration: str | None,
                  timezone: str | None) -> None:
    """Move the planned end of window NAME."""
    config = load(config_path)
    extended = in_service(config, lambda ctx: service.extend_window(
        ctx, name, until=until or None, by=duration or None, timezone=timezone))
    click.echo(f"extended {extended.describe(SystemClock().now())}")


@window.command("cancel")
@config_option
@click.argument("name")
def window_cancel(config_path: str | None, name: str) -> None:
    """Cancel window NAME (an active one releases its stores at once)."""
    config = load(config_path)
    cancelled = in_service(config, lambda ctx: service.cancel_window(ctx, name))
    click.echo(f"cancelled {cancelled.name}")

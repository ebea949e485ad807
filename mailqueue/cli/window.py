"""``mailqueue window list|start|end|extend|cancel``: see and change the maintenance windows
the queue database holds, so a running server follows them."""

from __future__ import annotations

import json
import sys

import click

from mailqueue.cli._common import config_option, in_queue, load, name_argument
from mailqueue.clock import SystemClock
from mailqueue.config import Config
from mailqueue.control.windows import Inbound, Window
from mailqueue.errors import WindowError
from mailqueue.queue.store import ControlState
from mailqueue.timeparse import (
    format_duration,
    format_time,
    get_zone,
    parse_duration,
    parse_time,
)


@click.group()
def window() -> None:
    """Maintenance windows: list, start, end, extend, cancel."""


def _find(windows: list[Window], name: str) -> Window | None:
    return next((w for w in windows if w.name == name), None)


def _require(windows: list[Window], name: str) -> Window:
    found = _find(windows, name)
    if found is None:
        known = ", ".join(w.name for w in windows) or "none"
        raise WindowError(f"no window named {name!r} (known: {known})")
    return found


@window.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per window.")
def window_list(config_path: str | None, as_json: bool) -> None:
    """Show every window and its state."""
    config = load(config_path)
    now = SystemClock().now()
    windows = in_queue(config, lambda q: q.windows())
    if not windows:
        click.echo("no windows")
    for w in windows:
        if as_json:
            click.echo(json.dumps({
                "name": w.name, "state": w.effective_state(now).value,
                "stores": list(w.stores), "inbound": w.inbound.value,
                "start": format_time(w.start, w.timezone), "end": format_time(w.end, w.timezone),
                "started_at": w.started_at and format_time(w.started_at),
                "ended_at": w.ended_at and format_time(w.ended_at)}))
        else:
            click.echo(w.describe(now))


def _stores(stores: str | None, config: Config) -> tuple[str, ...]:
    """The stores ``--stores A,B`` names (each one known); () when the option is absent."""
    if stores is None:
        return ()
    chosen = tuple(dict.fromkeys(s.strip() for s in stores.split(",") if s.strip()))
    if not chosen:
        raise click.UsageError("--stores: name at least one store (leave the option out for "
                               "every store)")
    known = [s.name for s in config.stores]
    for store in chosen:
        if store not in known:
            raise click.UsageError(f"--stores: unknown store {store!r} (known: "
                                   f"{', '.join(known)})")
    return chosen


def _until(until: str | None, duration: str | None, now: float, zone: str | None,
           what: str = "--for") -> float | None:
    if until and duration:
        raise click.UsageError(f"give --until or {what}, not both")
    if until:
        return parse_time(until, zone, now=now)
    if duration:
        return now + parse_duration(duration)
    return None


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
    name_argument(name, "window name")
    if timezone is not None:
        get_zone(timezone)
    now = SystemClock().now()
    end = _until(until, duration, now, timezone)
    chosen = _stores(stores, config)

    async def action(queue: ControlState) -> Window:
        current = _find(await queue.windows(), name)
        if current is None:
            if end is None:
                raise WindowError(f"no window named {name!r}: to create it, give --for "
                                  "DURATION or --until TIME")
            fresh = Window(name=name, stores=chosen, start=now, end=end,
                           inbound=Inbound(inbound or "queue"), timezone=timezone)
            started = fresh.started_now(now, end)
            await queue.save_window(started)
            return started
        if stores is not None or inbound:
            raise click.UsageError("--stores and --inbound only apply to a new window")
        started = current.started_now(now, end)
        await queue.save_window(started)
        return started

    click.echo(f"started {in_queue(config, action).describe(now)}")


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
    now = SystemClock().now()
    limit = parse_duration(wait_limit) if wait_limit else None
    if limit is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait")

    async def action(queue: ControlState) -> Window:
        ended = _require(await queue.windows(), name).ended_now(now)
        await queue.save_window(ended)
        return ended

    ended = in_queue(config, action)
    lasted = format_duration(now - (ended.started_at or ended.start))
    click.echo(f"ended {ended.name} after {lasted}; delivery of its queued mail begins")
    if wait:
        from mailqueue.cli._drain import watch_drain

        stores = list(ended.stores) or [s.name for s in config.stores]
        summary = in_queue(config, lambda q: watch_drain(q, stores, now, limit=limit))
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
    now = SystemClock().now()
    if not until and not duration:
        raise click.UsageError("give --until TIME or --by DURATION")
    if until and duration:
        raise click.UsageError("give --until or --by, not both")
    if timezone is not None:
        get_zone(timezone)
    by = parse_duration(duration) if duration else 0.0

    async def action(queue: ControlState) -> Window:
        current = _require(await queue.windows(), name)
        zone = timezone or current.timezone
        end = parse_time(until, zone, now=now) if until else current.end + by
        extended = current.extended(now, end)
        await queue.save_window(extended)
        return extended

    extended = in_queue(config, action)
    click.echo(f"extended {extended.describe(now)}")


@window.command("cancel")
@config_option
@click.argument("name")
def window_cancel(config_path: str | None, name: str) -> None:
    """Cancel window NAME (an active one releases its stores at once)."""
    config = load(config_path)
    now = SystemClock().now()

    async def action(queue: ControlState) -> Window:
        cancelled = _require(await queue.windows(), name).cancelled(now)
        await queue.save_window(cancelled)
        return cancelled

    click.echo(f"cancelled {in_queue(config, action).name}")

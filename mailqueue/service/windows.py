"""Windows: list, start, end, extend, cancel, and how far an ended window's mail has
drained."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailqueue.config import check_name
from mailqueue.control.windows import Inbound, Window, WindowState
from mailqueue.errors import UnknownWindowError, WindowStateError
from mailqueue.service.context import Context, about
from mailqueue.timeparse import format_time, get_zone, parse_duration, parse_time


def window_json(w: Window, now: float) -> dict[str, Any]:
    """A window as ``window list --json`` prints it."""
    return {"name": w.name, "state": w.effective_state(now).value, "stores": list(w.stores),
            "inbound": w.inbound.value, "start": format_time(w.start, w.timezone),
            "end": format_time(w.end, w.timezone),
            "started_at": w.started_at and format_time(w.started_at),
            "ended_at": w.ended_at and format_time(w.ended_at)}


def window_view(w: Window, now: float) -> dict[str, Any]:
    """:func:`window_json` with what a page counting down needs: the zone, the times as
    POSIX seconds, the seconds to the start (scheduled) or to the end (active)."""
    state = w.effective_state(now)
    return window_json(w, now) | {
        "timezone": w.timezone, "start_epoch": w.start, "end_epoch": w.end,
        "started_at_epoch": w.started_at, "ended_at_epoch": w.ended_at,
        "seconds_to_start": max(0.0, w.start - now) if state is WindowState.SCHEDULED
        else None,
        "seconds_to_end": max(0.0, w.end - now) if state is WindowState.ACTIVE else None}


async def list_windows(ctx: Context) -> list[Window]:
    """Every window the queue database holds."""
    return await ctx.queue.windows()


async def get_window(ctx: Context, name: str) -> Window:
    """Window ``name``; :class:`UnknownWindowError` naming the windows there are."""
    return _require(await ctx.queue.windows(), name)


def _find(windows: list[Window], name: str) -> Window | None:
    return next((w for w in windows if w.name == name), None)


def _require(windows: list[Window], name: str) -> Window:
    found = _find(windows, name)
    if found is None:
        known = ", ".join(w.name for w in windows) or "none"
        raise UnknownWindowError(f"no window named {name!r} (known: {known})", field="name")
    return found


def _chosen_stores(ctx: Context, stores: Sequence[str] | None) -> tuple[str, ...]:
    """The stores a new window covers (each one configured); () for every store."""
    if stores is None:
        return ()
    chosen = tuple(dict.fromkeys(stores))
    if not chosen:
        raise ctx.invalid("stores", f"{ctx.name('stores')}: name at least one store (leave "
                                    "the option out for every store)")
    for store in chosen:
        if store not in ctx.stores:
            raise ctx.invalid("stores", f"{ctx.name('stores')}: unknown store {store!r} "
                                        f"(known: {', '.join(ctx.stores)})")
    return chosen


def _new_end(ctx: Context, until: str | None, duration: str | float | None, now: float,
             zone: str | None) -> float | None:
    if until is not None and duration is not None:
        raise ctx.invalid("until", f"give {ctx.name('until')} or {ctx.name('duration')}, "
                                   "not both")
    if until is not None:
        with about("until"):
            return parse_time(until, zone, now=now)
    if duration is not None:
        with about("duration"):
            return now + parse_duration(duration)
    return None


def _check_name(ctx: Context, name: str) -> None:
    try:
        check_name(name, "window name")
    except ValueError as exc:
        raise ctx.invalid("name", str(exc)) from None


def _check_zone(timezone: str | None) -> None:
    if timezone is not None:
        with about("timezone"):
            get_zone(timezone)


def _inbound(ctx: Context, inbound: str | None) -> Inbound | None:
    if inbound is None:
        return None
    try:
        return Inbound(inbound)
    except ValueError:
        raise ctx.invalid("inbound", f"{ctx.name('inbound')}: {inbound!r} is not one of "
                                     f"{', '.join(i.value for i in Inbound)}") from None


async def start_window(ctx: Context, name: str, *, until: str | None = None,
                       duration: str | float | None = None,
                       stores: Sequence[str] | None = None, inbound: str | None = None,
                       timezone: str | None = None) -> tuple[Window, bool]:
    """Start window ``name`` now; (the window, whether it was created).

    An unknown window is created when ``until`` or ``duration`` gives its end (covering
    ``stores``, every store by default, with the ``inbound`` policy); ``stores`` and
    ``inbound`` only apply to a new window. An active window started again takes the new
    end."""
    _check_name(ctx, name)
    _check_zone(timezone)
    now = ctx.now()
    end = _new_end(ctx, until, duration, now, timezone)
    chosen = _chosen_stores(ctx, stores)
    policy = _inbound(ctx, inbound)
    current = _find(await ctx.queue.windows(), name)
    if current is None:
        if end is None:
            raise UnknownWindowError(
                f"no window named {name!r}: to create it, give {ctx.name('duration')} "
                f"DURATION or {ctx.name('until')} TIME", field="name")
        fresh = Window(name=name, stores=chosen, start=now, end=end,
                       inbound=policy or Inbound.QUEUE, timezone=timezone)
        started = fresh.started_now(now, end)
        created = True
    else:
        if stores is not None or policy is not None:
            raise ctx.invalid("stores" if stores is not None else "inbound",
                              f"{ctx.name('stores')} and {ctx.name('inbound')} only apply "
                              "to a new window")
        started = current.started_now(now, end)
        created = False
    await ctx.queue.save_window(started)
    ctx.changed()
    return started, created


async def end_window(ctx: Context, name: str) -> Window:
    """End window ``name`` now: its stores' queued mail is delivered."""
    ended = _require(await ctx.queue.windows(), name).ended_now(ctx.now())
    await ctx.queue.save_window(ended)
    ctx.changed()
    return ended


async def extend_window(ctx: Context, name: str, *, until: str | None = None,
                        by: str | float | None = None, timezone: str | None = None) -> Window:
    """Move the planned end of window ``name`` to ``until`` or by ``by``."""
    if until is None and by is None:
        raise ctx.invalid("until", f"give {ctx.name('until')} TIME or {ctx.name('by')} "
                                   "DURATION")
    if until is not None and by is not None:
        raise ctx.invalid("until", f"give {ctx.name('until')} or {ctx.name('by')}, not both")
    _check_zone(timezone)
    now = ctx.now()
    with about("by"):
        push = parse_duration(by) if by is not None else 0.0
    current = _require(await ctx.queue.windows(), name)
    with about("until"):
        end = parse_time(until, timezone or current.timezone, now=now) \
            if until is not None else current.end + push
    extended = current.extended(now, end)
    await ctx.queue.save_window(extended)
    ctx.changed()
    return extended


async def cancel_window(ctx: Context, name: str) -> Window:
    """Cancel window ``name`` (an active one releases its stores at once)."""
    cancelled = _require(await ctx.queue.windows(), name).cancelled(ctx.now())
    await ctx.queue.save_window(cancelled)
    ctx.changed()
    return cancelled


def drain_stores(ctx: Context, window: Window) -> list[str]:
    """The stores whose mail a window's end lets go."""
    return list(window.stores) or ctx.stores


async def drain_status(ctx: Context, name: str) -> dict[str, Any]:
    """How far the mail of ended window ``name`` has drained: still to go, settled since
    the end, the rate since then and the time left at that rate."""
    window = _require(await ctx.queue.windows(), name)
    now = ctx.now()
    if window.effective_state(now) is not WindowState.ENDED:
        raise WindowStateError(f"window {name!r} is {window.effective_state(now)}, not ended")
    since = window.ended_at if window.ended_at is not None else window.end
    stores = drain_stores(ctx, window)
    progress = await ctx.queue.drain_progress(stores, since)
    settled = progress.delivered + progress.bounced
    elapsed = max(0.0, now - since)
    rate = settled / elapsed if elapsed > 0 else 0.0
    eta = 0.0 if not progress.remaining else progress.remaining / rate if rate > 0 else None
    return {"window": name, "since": format_time(since), "since_epoch": since,
            "stores": stores, "remaining": progress.remaining, "held": progress.held,
            "delivered": progress.delivered, "bounced": progress.bounced,
            "deleted": progress.deleted, "last_settled_epoch": progress.last_settled,
            "rate_per_second": round(rate, 3),
            "eta_seconds": None if eta is None else round(eta, 1),
            "done": progress.remaining == 0}

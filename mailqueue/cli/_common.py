"""Helpers the command-line modules share: the config option, loading, running a queue
action in a fresh event loop."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import click

from mailqueue.config import Config, check_name, load_config
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.store import QueueStore

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def config_option(func: F) -> F:
    return click.option(
        "-c", "--config", "config_path", metavar="FILE", envvar="MAILQUEUE_CONFIG",
        help="Config file (TOML). Default: $MAILQUEUE_CONFIG.")(func)


def load(config_path: str | None) -> Config:
    return load_config(config_path)


# The largest count a queue column holds on every backend (PostgreSQL's INTEGER).
MAX_COUNT = 2**31 - 1


class FiniteFloatRange(click.FloatRange):
    """A float range that also refuses ``nan`` and ``inf`` (click's own lets them pass)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def name_argument(value: str, what: str) -> str:
    """``value`` if it is a valid ``what`` name (the rule the config file applies to store,
    window and node names); a usage error naming the form otherwise."""
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def with_queue(config: Config, action: Callable[[QueueStore], Awaitable[T]]) -> T:
    """Open the queue (which must exist: a command never creates one), add configured
    windows it does not know, run ``action``, close."""
    from mailqueue.control.plane import seed_windows

    store = SqlQueueStore(config.queue.url)
    await store.open(create=False)
    try:
        await seed_windows(store, config.windows)
        return await action(store)
    finally:
        await store.close()


def in_queue(config: Config, action: Callable[[QueueStore], Awaitable[T]]) -> T:
    """Run ``action`` against the configured queue and return its result."""
    return run(with_queue(config, action))

"""Helpers the command-line modules share: the config option, loading, running a queue
action in a fresh event loop."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

import click

from mailqueue.clock import SystemClock
from mailqueue.config import Config, check_name, load_config
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.store import QueueStore
from mailqueue.service import Context

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


async def with_queue(config: Config, action: Callable[[QueueStore], Awaitable[T]],
                     seed: bool = True) -> T:
    """Open the queue (which must exist: a command never creates one), add configured
    windows it does not know (unless ``seed`` is false), run ``action``, close."""
    from mailqueue.control.plane import seed_windows

    store = SqlQueueStore(config.queue.url)
    await store.open(create=False)
    try:
        if seed:
            await seed_windows(store, config.windows)
        return await action(store)
    finally:
        await store.close()


def in_queue(config: Config, action: Callable[[QueueStore], Awaitable[T]]) -> T:
    """Run ``action`` against the configured queue and return its result."""
    return run(with_queue(config, action))


# The options the command line spells a service operation's arguments as, in its messages.
SPELLING = {
    "until": "--until", "duration": "--for", "by": "--by", "stores": "--stores",
    "inbound": "--inbound", "timezone": "--timezone", "state": "--state", "store": "--store",
    "older_than": "--older-than", "latency": "--latency", "failure_rate": "--failure-rate",
    "fail_next": "--fail-next", "mode": "MODE", "name": "NAME",
}


class _QueueOnDemand:
    """The configured queue, opened when an operation first asks it something: an
    operation checks its arguments first, so a bad one is named even where the queue
    does not exist, as it was before any queue was opened."""

    def __init__(self, config: Config, seed: bool) -> None:
        self._config = config
        self._seed = seed
        self._store: SqlQueueStore | None = None

    async def _open(self) -> SqlQueueStore:
        if self._store is None:
            from mailqueue.control.plane import seed_windows

            store = SqlQueueStore(self._config.queue.url)
            await store.open(create=False)
            self._store = store
            if self._seed:
                await seed_windows(store, self._config.windows)
        return self._store

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await getattr(await self._open(), name)(*args, **kwargs)
        return call

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()


def in_service(config: Config, action: Callable[[Context], Awaitable[T]],
               seed: bool = True) -> T:
    """Run a service operation against the configured queue (which must exist: a command
    never creates one; configured windows it does not know are added unless ``seed`` is
    false), on the system clock, with the command line's spelling of its arguments."""
    async def main() -> T:
        queue = _QueueOnDemand(config, seed)
        try:
            return await action(Context(config, cast(QueueStore, queue), SystemClock(),
                                        SPELLING))
        finally:
            await queue.close()

    return run(main())

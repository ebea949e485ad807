"""Helpers the command-line modules share: the config option, loading, running a queue
action in a fresh event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import click

from mailqueue.config import Config, load_config
from mailqueue.queue.models import QueueStore
from mailqueue.queue.sqlstore import SqlQueueStore

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def config_option(func: F) -> F:
    return click.option(
        "-c", "--config", "config_path", metavar="FILE", envvar="MAILQUEUE_CONFIG",
        help="Config file (TOML). Default: $MAILQUEUE_CONFIG.")(func)


def load(config_path: str | None) -> Config:
    return load_config(config_path)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def with_queue(config: Config, action: Callable[[QueueStore], Awaitable[T]]) -> T:
    """Open the queue (which must exist: a command never creates one), add configured
    windows it does not know, run ``action``, close."""
    from mailqueue.control import seed_windows

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

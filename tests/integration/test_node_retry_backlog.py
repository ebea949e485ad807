"""A node that comes back with a deep deferred backlog: ``retry_deferred`` reads the
store's waiting recipients, hashes each address to its node and makes the picked ones due,
while the event loop keeps serving everything else (SMTP sessions, the control plane).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from mailqueue.control.nodes import node_of
from mailqueue.queue.store import QueueStore
from mailqueue.queue.values import NewMessage, new_queue_id
from tests.helpers import opened_store

pytestmark = pytest.mark.drill  # a backlog of 40,000 recipients on each backend

T0 = 1_700_000_000.0
LATER = T0 + 600
NODES = 4
BACKLOG = 40_000  # recipients of the store waiting for a later attempt
PER_MESSAGE = 100
TICK = 0.002


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(queue_url: str) -> AsyncIterator[QueueStore]:
    async with opened_store(queue_url) as queue:
        yield queue


def message(n: int, addresses: list[str]) -> NewMessage:
    body = f"m{n}".encode()
    return NewMessage(queue_id=new_queue_id(T0), mail_from="a@src.test",
                      recipients=tuple((a, "basic") for a in addresses), body=body,
                      received_at=LATER + n * 1e-6, digest=hashlib.sha256(body).hexdigest())


async def deferred_backlog(store: QueueStore, count: int = BACKLOG) -> list[str]:
    """``count`` recipients of basic waiting for a later attempt (their first is due at
    ``LATER``, as a deferred one's retry is); their addresses."""
    addresses = [f"user{n}@basic.example" for n in range(count)]
    await store.enqueue([message(i, addresses[i:i + PER_MESSAGE])
                         for i in range(0, count, PER_MESSAGE)])
    assert await store.claim(["basic"], 10, "w", T0, T0 + 60) == []
    return addresses


def on_node(name: str) -> Callable[[str], bool]:
    return lambda address: node_of("basic", NODES, address) == name


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection meanwhile: a full collection pauses the loop for as long as
    the whole process's heap takes to scan, whatever runs; what is measured here is the
    time the work itself holds the loop."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def longest_stall(work: asyncio.Task[int]) -> float:
    """The longest the event loop went without running a ticker while ``work`` ran."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not work.done():
        before = loop.time()
        await asyncio.sleep(TICK)
        worst = max(worst, loop.time() - before - TICK)
    return worst


async def test_a_deep_backlog_is_released_without_stalling_the_loop(
        store: QueueStore) -> None:
    addresses = await deferred_backlog(store)
    picked = on_node("basic-2")
    expected = sum(1 for a in addresses if picked(a))

    with collector_paused():
        started = time.monotonic()
        work = asyncio.create_task(store.retry_deferred("basic", T0, picked,
                                                        "node basic-2 is up"))
        stall = await longest_stall(work)
        took = time.monotonic() - started

    assert await work == expected
    # The rows are read in slices, the addresses hashed on a thread and the updates made
    # in short transactions: the loop is never held for more than a slice.
    assert stall < 0.1, f"the event loop stalled {stall * 1000:.0f} ms (of {took:.2f} s)"
    due = []
    while claims := await store.claim(["basic"], 5000, "w2", T0, T0 + 60):
        due += claims
    assert len(due) == expected and all(picked(c.address) for c in due)


async def test_mail_is_accepted_while_the_backlog_is_sorted(store: QueueStore) -> None:
    """Choosing the recipients (however long the node lookup takes) holds neither the loop
    nor the writer's lock, so a message accepted meanwhile is committed at once."""
    await deferred_backlog(store, 4000)
    on_basic_2 = on_node("basic-2")

    def slow_pick(address: str) -> bool:
        time.sleep(0.0002)  # a lookup slower than the hash, to be seen at work
        return on_basic_2(address)

    worst = 0.0
    enqueued = 0
    with collector_paused():
        work = asyncio.create_task(store.retry_deferred("basic", T0, slow_pick,
                                                        "node basic-2 is up"))
        while not work.done():
            enqueued += 1
            started = time.monotonic()
            await store.enqueue([message(10_000 + enqueued, [f"new{enqueued}@basic.example"])])
            worst = max(worst, time.monotonic() - started)
        assert await work > 0
    assert enqueued > 5
    assert worst < 0.3, f"an enqueue waited {worst * 1000:.0f} ms"

"""Event loop choice (uvloop when it is installed, the ``fast`` extra; asyncio otherwise),
and the CPUs a server runs on."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from mailqueue.errors import ConfigError

T = TypeVar("T")

LOOPS = ("auto", "asyncio", "uvloop")


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``name`` (None: asyncio's default). ``uvloop`` when it is missing
    raises :class:`RuntimeError` with the fix."""
    if name == "asyncio" or (name == "auto" and not uvloop_available()):
        return None
    if not uvloop_available():
        raise RuntimeError("uvloop is not installed (pip install 'mailqueue[fast]')")
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


# The interpreter's switch interval for a running server (seconds): see cli.serve.
SERVER_SWITCH_INTERVAL = 0.0005


def loop_name(name: str = "auto") -> str:
    """What ``name`` resolves to on this installation: ``uvloop`` or ``asyncio``."""
    return "asyncio" if loop_factory(name) is None else "uvloop"


def run(main: Coroutine[Any, Any, T], name: str = "auto") -> T:
    """``asyncio.run`` on the chosen loop."""
    try:
        factory = loop_factory(name)
    except RuntimeError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def pin_cpus(cpus: tuple[int, ...], setting: str = "[server] cpus") -> None:
    """Keep this process, and every thread it starts from now on, on ``cpus``
    (``setting``, which the one-line :class:`ConfigError` names; call it before any thread
    starts).

    The event loop, the group committer's thread and the checkpoint thread hand the GIL to
    each other thousands of times a second. On different CPUs every hand-off wakes another
    CPU and moves the data with it; on one, it is a switch on the spot. Measured on two
    cores under ``smtp-source`` (``benchmarks/checkout_ab.py``, 2 runs each, user + system):
    562 / 478 -> 381 / 398 us of server CPU per accepted message, 804 / 914 -> 535 / 572
    per delivered one."""
    setaffinity = getattr(os, "sched_setaffinity", None)
    available = check_cpus(cpus, setting, sorted(os.sched_getaffinity(0))
                           if setaffinity is not None else None)
    assert setaffinity is not None
    global _before_pinning
    if _before_pinning is None:
        _before_pinning = tuple(available)
    setaffinity(0, set(cpus))


_before_pinning: tuple[int, ...] | None = None


def check_cpus(cpus: tuple[int, ...], setting: str,
               available: list[int] | tuple[int, ...] | None) -> list[int]:
    """Raise the one-line :class:`ConfigError` for ``setting`` if ``cpus`` are not all in
    ``available`` (None: affinity is not supported here); the available CPUs, sorted."""
    if available is None:
        raise ConfigError(f"{setting}: CPU affinity is not supported on this platform; "
                          "remove the setting")
    missing = [cpu for cpu in cpus if cpu not in available]
    if missing:
        raise ConfigError(f"{setting}: CPU {', '.join(map(str, missing))} is not "
                          f"available to this process (available: "
                          f"{', '.join(map(str, sorted(available)))})")
    return sorted(available)


def cpus_before_pinning() -> tuple[int, ...]:
    """The CPUs this process could run on before :func:`pin_cpus` (now, if never pinned;
    empty where affinity is not supported)."""
    if _before_pinning is not None:
        return _before_pinning
    getaffinity = getattr(os, "sched_getaffinity", None)
    return tuple(sorted(getaffinity(0))) if getaffinity is not None else ()


def behind_the_loop() -> None:
    """Let the calling thread, a helper of the event loop's, wait for its turn: Linux's
    ``SCHED_BATCH``, under which waking it does not preempt the running thread. Elsewhere,
    or when the thread was started under another policy than the default (``chrt``: a
    real-time loop would starve a batch writer), nothing.

    With the server on one CPU (``[server] cpus``), a session handing its message to the
    queue writer's thread woke that thread on the spot, mid-callback, with the GIL still
    held by the loop: the writer went straight back to sleep waiting for the GIL, and the
    loop paid both switches. Batch-scheduled, the writer runs when the loop next waits, or
    at the scheduler's next tick.

    Measured with ``benchmarks/checkout_ab.py --modes latency,paced`` (load_test.py, 50
    connections), 13 saturated and 8 paced rounds a side over three runs: p99 median
    30.2 -> 27.8 ms saturated, 32.6 -> 28.8 ms at 1,000 msg/s. The cost: while the loop
    has no pause at all (50 connections opening at once), a handed-over batch waited
    12-27 ms for the writer to start, where it waited under 1 ms."""
    setscheduler = getattr(os, "sched_setscheduler", None)
    policy = getattr(os, "SCHED_BATCH", None)
    if setscheduler is None or policy is None:
        return
    with contextlib.suppress(OSError):
        if os.sched_getscheduler(0) == os.SCHED_OTHER:
            setscheduler(0, policy, os.sched_param(0))

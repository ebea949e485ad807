"""Event loop choice (uvloop when it is installed, the ``fast`` extra; asyncio otherwise),
and the CPUs a server runs on."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
from collections.abc import Callable, Coroutine, Sequence
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
    """Keep this process, the threads it has started and every thread it starts from now
    on, on ``cpus`` (``setting``, which the one-line :class:`ConfigError` names).

    The event loop, the group committer's thread and the checkpoint thread hand the GIL to
    each other thousands of times a second. On different CPUs every hand-off wakes another
    CPU and moves the data with it; on one, it is a switch on the spot, and the server
    spends markedly less CPU per accepted and per delivered message
    (``benchmarks/checkout_ab.py`` compares pinned and unpinned)."""
    setaffinity = getattr(os, "sched_setaffinity", None)
    available = check_cpus(cpus, setting, sorted(os.sched_getaffinity(0))
                           if setaffinity is not None else None)
    assert setaffinity is not None
    global _before_pinning
    if _before_pinning is None:
        _before_pinning = tuple(available)
    setaffinity(0, set(cpus))
    # Threads started before (the log writer's) keep their own affinity: move them too.
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that has just ended
                setaffinity(int(task), set(cpus))


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
    queue writer's thread would wake that thread on the spot, mid-callback, with the GIL
    still held by the loop: the writer would go straight back to sleep waiting for the
    GIL, and the loop would pay both switches. Batch-scheduled, the writer runs when the
    loop next waits, or at the scheduler's next tick, which lowers the accept latency's
    p99 (``benchmarks/checkout_ab.py --modes latency,paced``). The cost: while the loop has
    no pause at all (many connections opening at once), a handed-over batch waits longer
    for the writer to start."""
    setscheduler = getattr(os, "sched_setscheduler", None)
    policy = getattr(os, "SCHED_BATCH", None)
    if setscheduler is None or policy is None:
        return
    with contextlib.suppress(OSError):
        if os.sched_getscheduler(0) == os.SCHED_OTHER:
            setscheduler(0, policy, os.sched_param(0))


def child_cpus(writer_cpus: Sequence[int] | None, server_cpus: Sequence[int] | None,
               available: Sequence[int]) -> tuple[int, ...] | None:
    """The CPUs for the child: ``writer_cpus`` if set; else those of ``available`` (the
    CPUs the process had before ``[server] cpus``) that the server does not use, or all of
    ``available`` when it uses them all; None when nothing is pinned."""
    if writer_cpus:
        return tuple(writer_cpus)
    if not server_cpus:
        return None
    free = tuple(cpu for cpu in available if cpu not in server_cpus)
    return free or tuple(available)

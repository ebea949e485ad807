"""Event loop choice: uvloop when it is installed (the ``fast`` extra), asyncio otherwise."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

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

"""Named fault points for reliability drills, armed from the environment.

A fault point is one call, ``faults.hit("commit.after")``, placed where a crash or an error
would hurt most. Nothing happens unless the point is armed by ``MAILQUEUE_FAULTS``, read once
when the module is imported (the drills set it for a server subprocess)::

    MAILQUEUE_FAULTS="commit.after:kill@3,commit.before:raise"

Each entry is ``point:action[@n]``: the action fires on the ``n``-th hit of the point
(default 1) and on no other. Actions:

``kill``
    SIGKILL this process on the spot (a power cut: no cleanup, no flush).
``raise``
    raise :class:`FaultInjected` (an ``OSError``, as a failing disk or socket would).

The points in the package (``raise`` only where an I/O error is already handled):

========================= ==========================================================
``commit.before``         a group commit is about to write its batch (raise: 451)
``enqueue.mid_batch``     inside the commit: message rows written, recipients not yet
``commit.after``          a group commit returned, before any session hears its 250
``deliver.linked``        a Maildir file was linked into ``new/`` (raise: deferred)
``deliver.before_settle`` a batch is in the Maildirs, its settle not yet written (kill)
========================= ==========================================================

Unarmed, :func:`hit` is one dictionary truth test: zero cost on the hot path.
"""

from __future__ import annotations

import os
import signal

from mailqueue.errors import ConfigError

ENV = "MAILQUEUE_FAULTS"
ACTIONS = ("kill", "raise")


class FaultInjected(OSError):
    """The error an armed ``raise`` fault point throws."""


class FaultSpecError(ConfigError):
    """``MAILQUEUE_FAULTS`` could not be read."""


_armed: dict[str, tuple[str, int]] = {}
_hits: dict[str, int] = {}


def parse(spec: str) -> dict[str, tuple[str, int]]:
    """``"point:action[@n],..."`` as ``{point: (action, n)}``."""
    armed: dict[str, tuple[str, int]] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        point, sep, action = entry.partition(":")
        action, _, nth = action.partition("@")
        if not sep or not point or action not in ACTIONS or (nth and not nth.isdigit()):
            raise FaultSpecError(
                f"{ENV}: bad entry {entry!r}; expected point:kill|raise[@n]")
        armed[point] = (action, int(nth) if nth else 1)
    return armed


def arm(spec: str) -> None:
    """Replace the armed points with ``spec`` (tests in one process use this)."""
    _armed.clear()
    _hits.clear()
    _armed.update(parse(spec))


def hit(point: str) -> None:
    """Pass the fault point ``point``; fire its action if it is armed for this hit."""
    if not _armed or point not in _armed:
        return
    action, nth = _armed[point]
    _hits[point] = count = _hits.get(point, 0) + 1
    if count != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise FaultInjected(f"fault injected at {point}")


def check() -> None:
    """Raise :class:`FaultSpecError` if ``MAILQUEUE_FAULTS`` could not be read."""
    if _spec_error is not None:
        raise FaultSpecError(_spec_error)


_spec_error: str | None = None
try:
    arm(os.environ.get(ENV, ""))
except FaultSpecError as _exc:  # reported by check(), so an import never fails
    _spec_error = str(_exc)

"""What ``mailqueue serve`` picks at start where the configuration leaves it the choice.

``[queue] writer = "auto"`` (the default) becomes ``"process"`` where the queue is an
SQLite file and the machine has a CPU to spare for it, and ``"thread"`` otherwise; the
event loop ``auto`` becomes uvloop where it is installed. ``serve`` logs the outcome as one
``server_tuned`` event, each choice with its reason.

Measured on two cores (docs/performance.md): with the writer in a process of its own, the
event loop no longer shares the interpreter lock with the commit's SQLite work, and the
durable accept rate comes within about 10% of the ``--null`` ceiling; on a thread it stays
near 0.75-0.8 of it. On one CPU the child would only take turns with the loop and cost a
second interpreter, so the thread stays.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mailqueue import loops
from mailqueue.config import Config
from mailqueue.sqliteurl import sqlite_path

# Where cgroup v2 states this process's CPU quota ("max 100000" or "200000 100000").
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@dataclass(frozen=True)
class Choice:
    """One setting as ``serve`` runs it, and why."""

    value: str
    reason: str


def cpu_quota(path: Path = CGROUP_CPU_MAX) -> float | None:
    """The CPUs' worth of time a cgroup v2 quota allows this process (``cpu.max``); None
    when there is no quota or it cannot be read."""
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def usable_cpus(available: Sequence[int], quota: float | None) -> int:
    """How many CPUs this process can keep busy at once: those it may run on (``available``,
    or ``os.cpu_count()`` where affinity is unknown), fewer under a CPU quota."""
    count = len(set(available)) or os.cpu_count() or 1
    return count if quota is None else max(1, min(count, math.ceil(quota)))


def choose_writer(config: Config, *, run_smtp: bool, null: bool, cpus: int) -> Choice:
    """Where the group commit runs for ``[queue] writer``: ``"auto"`` is decided here from
    the queue's URL, the process's role and ``cpus`` (:func:`usable_cpus`); a set value is
    kept."""
    queue = config.queue
    if queue.writer != "auto":
        return Choice(queue.writer, "set in [queue] writer")
    if null:
        return Choice("thread", "--null: nothing is stored")
    if sqlite_path(queue.url) is None:
        return Choice("thread", "the queue is not an SQLite file")
    if not run_smtp:
        return Choice("thread", "no SMTP front end in this process: nothing to commit")
    if queue.writer_cpus is not None:
        return Choice("process", "[queue] writer_cpus is set")
    if cpus < 2:
        return Choice("thread", "one usable CPU: a writer process would only take turns "
                      "with the event loop")
    return Choice("process", f"{cpus} usable CPUs and an SQLite file queue")


def choose_loop(setting: str) -> Choice:
    """The event loop ``--loop`` resolves to, and why."""
    name = loops.loop_name(setting)
    if setting != "auto":
        return Choice(name, "set with --loop")
    if name == "uvloop":
        return Choice(name, "installed")
    return Choice(name, "uvloop is not installed (pip install 'mailqueue[fast]')")


def tuned(config: Config, writer: Choice) -> Config:
    """``config`` with ``[queue] writer`` as chosen."""
    return config.model_copy(update={"queue": config.queue.model_copy(
        update={"writer": writer.value})})

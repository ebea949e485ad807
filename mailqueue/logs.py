"""Structured logging: configured once, by the CLI (or a test), never at import."""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


_settings = ("console", "info")


def settings() -> tuple[str, str]:
    """The format and level :func:`configure_logging` was last called with (a helper
    process logs the same way)."""
    return _settings


LINGER = 0.05  # seconds a background writer waits for more lines after the first


class LineWriter:
    """Log lines handed over by any thread, written to ``stream`` by a thread of its own.

    A server logs a line for every message it queues and every copy it delivers, from its
    event loop. Writing each one there would hold the loop up for a system call per line,
    and, while the delivery threads fsync their files, a write to a log file on the same
    disk can wait for the disk. Here the loop only appends the rendered line to a list;
    the writer thread, woken by the first, takes what has gathered within LINGER seconds
    and writes it with one call. Lines keep their order. :meth:`close` (also run at exit)
    writes what is left; a process killed outright loses at most the lines of the last
    moment, never a queue's record (the queue database is the ledger, not the log)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def msg(self, message: str) -> None:
        with self._cond:
            if self._closed:  # after close (interpreter exit): write it here
                self._write([message])
                return
            self._lines.append(message)
            if len(self._lines) == 1:
                self._cond.notify()

    log = debug = info = warn = warning = msg
    err = error = critical = exception = fatal = failure = msg

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._lines and not self._closed:
                    self._cond.wait()
                closed = self._closed
            if not closed:
                # Let lines gather: one wake-up and one write for all of them, not a
                # thread switch and a write for each line.
                time.sleep(LINGER)
            with self._cond:
                lines, self._lines = self._lines, []
                closed = self._closed
            if lines:
                self._write(lines)
            if closed:
                return

    def _write(self, lines: list[str]) -> None:
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nowhere left to log
            pass

    def close(self) -> None:
        """Write every line handed over so far, then stop the thread; a line logged
        after this is written at once, by its caller."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5.0)


_writer: LineWriter | None = None


def configure_logging(fmt: str = "console", level: str = "info",
                      stream: TextIO | None = None, background: bool = False) -> None:
    """Console lines by default, one JSON object per line with ``fmt="json"``.

    ``background``: lines are written by a thread of their own (:class:`LineWriter`), so
    the caller's thread (a server's event loop) never waits for the write. Once per
    process: a logger is built on its first use and keeps this configuration."""
    global _settings, _writer
    _settings = (fmt, level)
    if _writer is not None:
        _writer.close()
        _writer = None
    target = stream or sys.stderr
    factory: Any = structlog.PrintLoggerFactory(target)
    if background:
        writer = _writer = LineWriter(target)
        factory = lambda *_args: writer  # noqa: E731 - one writer for every logger
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        # A logger is built on its first call, not on every call (a large part of a line's cost).
        cache_logger_on_first_use=True,
    )
    # aiosmtpd logs every connection at INFO through stdlib logging; keep it for debugging.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if level == "debug" else
                                           logging.WARNING)

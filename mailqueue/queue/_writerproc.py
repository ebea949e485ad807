"""The SQLite enqueue transaction in a process of its own (``[queue] writer = "process"``).

In the default mode the group committer's thread runs :meth:`SqliteWriter.write_blocking`
inside the server, so the commit's CPU (rows, SQLite's pages, the WAL writes, the
checkpoints) and the event loop share one interpreter lock and, with ``[server] cpus``, one
CPU. Here the group committer is a task on the event loop: it sends each batch, pickled,
over a socket pair to a child process that runs the same transaction (and the checkpoints)
and answers when it is committed, and the committer's sessions hear their 250 only after
that answer (contract 1). The child runs on the CPUs ``[queue] writer_cpus`` lists (by
default those ``[server] cpus`` leaves free), with no lock in common with the loop.

With the server pinned to one CPU, this brings the server's own CPU per durable message
close to that of ``--null`` storage (``benchmarks/checkout_ab.py`` compares the two; the
performance page has the figures). The child is driven from the event loop, not from the
committer's thread: blocking sends and receives on a thread would keep its hand-overs of the
GIL in the loop's way.

After each commit the child checks that the queue's file is still the one the server
opened (:mod:`mailqueue.queue._queuefile`) and reports a file that is not: the batch gets a
451, and the server logs the loss. A path it cannot look at is reported with the commit,
which stands (its sessions hear 250).

A child that dies (killed, out of memory) fails the batch it held as a 451: its commit may
or may not have happened, so the sessions resend and no false 250 is given. The next batch
starts a new child. The child ignores SIGINT and SIGTERM, which a terminal or a service
manager sends to the whole process group: it ends when the server closes the socket, after
the commit it is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import structlog

from mailqueue import faults
from mailqueue.errors import QueueError, QueueFullError, QueueLostError
from mailqueue.queue._queuefile import FileId, QueueFile, format_id, parse_id
from mailqueue.sqliteurl import sqlite_path

log = structlog.get_logger("mailqueue.queue")

# How long a new child may take to import, open the queue and say it is ready.
START_TIMEOUT = 60.0
# How long a stopping child may take to finish its commit and close the queue.
STOP_TIMEOUT = 30.0

_READY = "ready"
_FULL = "full"
_LOST = "lost"
_UNCHECKED = "unchecked"
_ERROR = "error"
_ERRORS: dict[str, type[QueueError]] = {_FULL: QueueFullError, _LOST: QueueLostError}


class WriterProcess:
    """The server's end: :meth:`write`, awaited by the group committer's task."""

    def __init__(self, url: str, busy_timeout: float, cpus: Sequence[int] | None,
                 log_format: str = "json", log_level: str = "info", *,
                 identity: FileId | None = None) -> None:
        self._url = url
        # The queue file's identity when the server opened it: the child checks its path
        # against it after every commit (see mailqueue.queue._queuefile).
        self._identity = identity
        self._busy_timeout = busy_timeout
        self._cpus = tuple(cpus) if cpus else None
        self._log = (log_format, log_level)
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None  # blocking, until the streams take it
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._turn: asyncio.Lock | None = None  # one batch at a time
        self._closed = False
        self._broken = False  # the socket is out of step with the child: replace both
        self._starts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child and wait until it has opened the queue (blocking: call it on a
        thread)."""
        ours, theirs = socket.socketpair()
        # -c, not -m: the package imports this module, and runpy warns about running a
        # module that is already imported.
        cmd = [sys.executable, "-c", _CHILD, str(theirs.fileno()),
               self._url, repr(self._busy_timeout),
               ",".join(map(str, self._cpus)) if self._cpus else "", *self._log,
               format_id(self._identity)]
        # An armed fault point (MAILQUEUE_FAULTS) fires once per server, as in the server
        # itself: the children started after the first do not inherit it.
        env = None if not self._starts else {
            k: v for k, v in os.environ.items() if k != faults.ENV}
        self._starts += 1
        try:
            proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                    env=env)
        except OSError as exc:
            ours.close()
            raise QueueError(f"cannot start the queue writer process: {exc}") from exc
        finally:
            theirs.close()
        self._proc, self._sock = proc, ours
        try:
            ours.settimeout(START_TIMEOUT)
            reply = _receive(ours)
            ours.settimeout(None)
        except TimeoutError as exc:
            self._reap_blocking()
            raise QueueError(f"the queue writer process did not start within "
                             f"{START_TIMEOUT:.0f} s") from exc
        except (OSError, EOFError) as exc:
            code = self._reap_blocking()
            raise QueueError(f"the queue writer process ended at start (exit status "
                             f"{code}); its log says why") from exc
        if reply != _READY:
            self._reap_blocking()
            if isinstance(reply, tuple):
                raise _ERRORS.get(reply[0], QueueError)(reply[1])
            raise QueueError(str(reply))
        if self._closed:  # closed while this thread was starting it
            self._reap_blocking()
            raise QueueError("queue writer is not open")
        log.info("queue_writer_process_started", pid=proc.pid,
                 cpus=",".join(map(str, self._cpus)) if self._cpus else "all")

    async def write(self, message_rows: list[dict[str, Any]],
                    recipient_rows: list[dict[str, Any]]) -> str | None:
        """Commit the rows in the child; return once they are on disk: why the child could
        not look at the queue's path after the commit, or None when it could (or has no
        file to look at). If the child is gone, a new one is started for this batch; if it
        dies during it, QueueError."""
        if self._turn is None:
            self._turn = asyncio.Lock()
        payload = pickle.dumps((message_rows, recipient_rows), pickle.HIGHEST_PROTOCOL)
        async with self._turn:
            if self._closed:
                raise QueueError("queue writer is not open")
            try:
                if self._proc is not None and (
                        self._broken or self._proc.poll() is not None or
                        (self._streams is not None and self._streams[0].at_eof())):
                    # It died between batches (or an exchange with it was cut short): this
                    # batch goes to a new child, not to a 451.
                    await self._reap()
                if self._proc is None:
                    await asyncio.to_thread(self.start)
                reader, writer = await self._connected()
                writer.writelines((_HEADER.pack(len(payload)), payload))
                reply = await _read(reader)
            except asyncio.CancelledError:
                # An answer to this batch may still come, or a child still be starting:
                # neither may serve the next batch, which goes to a new child (this one
                # sees its socket close and ends after its commit).
                self._broken = True
                if self._streams is not None:
                    self._streams[1].close()
                raise
            except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
                code = await self._reap()
                raise QueueError("queue writer process ended during a commit "
                                 f"(exit status {code}); its outcome is unknown") from exc
        if reply is None:
            return None
        kind, text = reply
        if kind == _UNCHECKED:
            return str(text)
        raise _ERRORS.get(kind, QueueError)(text)

    async def close(self) -> None:
        """Let the child finish its commit and end; kill it past STOP_TIMEOUT."""
        self._closed = True
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            # Out of step with the child, the socket only needs closing: the child ends
            # at its end of file.
            if self._broken:
                pass
            elif self._streams is not None:
                with contextlib.suppress(OSError):
                    self._streams[1].write(_frame(None))
                    await self._streams[1].drain()
            elif self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.sendall(_frame(None))
            await self._reap(STOP_TIMEOUT)

    async def _connected(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is None:
            assert self._sock is not None
            self._sock.setblocking(False)
            self._streams = await asyncio.open_unix_connection(sock=self._sock,
                                                               limit=_READ_LIMIT)
        return self._streams

    async def _reap(self, wait: float = 5.0) -> int | None:
        """:meth:`_reap_blocking`, the streams closed here on the loop first."""
        streams, self._streams = self._streams, None
        if streams is not None:  # they own the socket
            self._sock = None
            streams[1].close()
        self._broken = False
        return await asyncio.to_thread(self._reap_blocking, wait)

    def _reap_blocking(self, timeout: float = 5.0) -> int | None:
        """Close our end and wait for the child (kill it past ``timeout``); its status."""
        proc, sock = self._proc, self._sock
        self._proc = self._sock = None
        if sock is not None:
            sock.close()
        if proc is None:
            return None
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code != 0:
            log.error("queue_writer_process_ended", pid=proc.pid, status=code)
        return code


_CHILD = "import sys; from mailqueue.queue._writerproc import main; sys.exit(main(sys.argv[1:]))"
_HEADER = struct.Struct("!Q")
_READ_LIMIT = 1 << 20


def _frame(obj: object) -> bytes:
    payload = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


async def _read(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def _receive(sock: socket.socket) -> Any:
    """One framed object from a blocking socket; EOFError when it is closed."""
    (size,) = _HEADER.unpack(_exactly(sock, _HEADER.size))
    return pickle.loads(_exactly(sock, size))


def _exactly(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError
        got += n
    return buf


# --- the child ---------------------------------------------------------------------------

def _serve(sock: socket.socket, url: str, busy_timeout: float,
           identity: FileId | None) -> None:
    from mailqueue.queue._sqlitewriter import SqliteWriter

    # The server logs a lost file; this process only reports it.
    path = sqlite_path(url)
    file = QueueFile(path, identity, announce=False) \
        if identity is not None and path is not None else None
    writer = SqliteWriter(url, busy_timeout, file=file)
    try:
        writer.open()
        writer.connect()
    except QueueLostError as exc:
        with contextlib.suppress(OSError):
            sock.sendall(_frame((_LOST, str(exc))))
        return
    except Exception as exc:  # told to the parent, which raises it
        with contextlib.suppress(OSError):
            sock.sendall(_frame((_ERROR, f"cannot open the queue in the writer process: "
                                 f"{exc}")))
        return
    try:
        sock.sendall(_frame(_READY))
        while True:
            try:
                batch = _receive(sock)
            except (EOFError, OSError):  # the server is gone
                break
            except Exception as exc:  # out of step with the server: end, it starts anew
                log.error("queue_writer_bad_batch", error=str(exc))
                break
            if batch is None:
                break
            try:
                writer.write_blocking(*batch)
            except QueueFullError as exc:
                reply: tuple[str, str] | None = (_FULL, str(exc))
            except QueueLostError as exc:
                reply = (_LOST, str(exc))
            except QueueError as exc:
                reply = (_ERROR, str(exc))
            except Exception as exc:  # a 451 for the batch, not a dead child
                reply = (_ERROR, f"queue write failed: {exc}")
            else:  # committed; the server hears if its file could not be looked at
                unchecked = file.unchecked if file is not None else None
                reply = None if unchecked is None else (_UNCHECKED, unchecked)
            try:
                sock.sendall(_frame(reply))
            except OSError:
                break
    except OSError:  # the server went away before it heard we were ready
        pass
    finally:
        _close(writer)


def _close(writer: Any) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT
    try:
        asyncio.run(asyncio.wait_for(writer.close(), max(1.0, deadline - time.monotonic())))
    except Exception as exc:  # ending anyway; the WAL is consistent
        log.warning("queue_writer_close_failed", error=str(exc))


def main(argv: Sequence[str]) -> int:
    fd, url, busy, cpus, log_format, log_level, identity = argv
    # A terminal's Ctrl-C and a service manager's SIGTERM reach the whole process group;
    # the server decides when this process ends, by closing the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Started from the group committer's batch-scheduled thread, it would inherit that.
    if hasattr(os, "SCHED_BATCH") and os.sched_getscheduler(0) == os.SCHED_BATCH:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    from mailqueue.logs import configure_logging

    configure_logging(log_format, log_level)
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(cpu) for cpu in cpus.split(",")})
        except OSError as exc:
            log.warning("queue_writer_cpus_ignored", cpus=cpus, error=str(exc))
    sock = socket.socket(fileno=int(fd))
    try:
        _serve(sock, url, float(busy), parse_id(identity))
    finally:
        sock.close()
    return 0

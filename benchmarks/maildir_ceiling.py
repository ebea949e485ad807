#!/usr/bin/env python3
"""The disk's own ceiling for a Maildir drain: only the Maildir protocol's file work.

For every message: create ``tmp/NAME``, write it, fsync it, rename it into ``new/``; after
each batch, one fsync of every ``new/`` directory the batch wrote into — what mailqueue's
Maildir store does for each copy, with no queue, no claims, no settles and no event loop
around it. ``benchmarks/run.py`` runs it right after each drain with the same message
count, size and mailbox spread (``ceiling/...`` in results.json), so the drain can be given
as a share of what the disk allows in the same minute.

    python benchmarks/maildir_ceiling.py -n 10000 --size 4096 --mailboxes 1
    python benchmarks/maildir_ceiling.py -n 10000 --mailboxes 10 --threads 16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mailqueue.config import DeliveryConfig

# What mailqueue adds to a message it writes into a Maildir (Return-Path, Delivered-To,
# Received, X-Mailqueue-Id): about this many bytes, so both write files of one size.
TRACE_BYTES = 300
# A batch: as many files as one claim of the delivery worker takes by default.
BATCH = DeliveryConfig.model_fields["batch_size"].default


def _write(box: Path, name: str, data: bytes) -> None:
    tmp = box / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, box / "new" / name)


def _write_share(jobs: list[tuple[Path, str]], data: bytes) -> None:
    for box, name in jobs:
        _write(box, name, data)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ceiling(root: Path, messages: int, size: int = 4096, mailboxes: int = 1,
            batch: int = BATCH, threads: int = 1) -> dict[str, Any]:
    """Write ``messages`` files of ``size`` (+ the trace headers) bytes round-robin into
    ``mailboxes`` Maildirs under ``root``, ``batch`` at a time, each batch shared out among
    ``threads``; the rate in files a second."""
    boxes = [root / f"u{i}" for i in range(mailboxes)]
    for box in boxes:
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True, exist_ok=True)
    data = b"X" * (size + TRACE_BYTES)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    start = time.perf_counter()
    try:
        for first in range(0, messages, batch):
            jobs = [(boxes[i % mailboxes], f"{i}.ceiling.localhost")
                    for i in range(first, min(first + batch, messages))]
            if pool is None:
                for box, name in jobs:
                    _write(box, name, data)
            else:  # shared out as the Maildir store shares a batch among its writers
                shares = min(threads, len(jobs))
                list(pool.map(_write_share, [jobs[share::shares] for share in range(shares)],
                              [data] * shares))
            for box in {box for box, _ in jobs}:
                _fsync_dir(box / "new")
    finally:
        if pool is not None:
            pool.shutdown()
    seconds = time.perf_counter() - start
    return {"rate": messages / seconds, "seconds": seconds, "messages": messages,
            "size": size, "mailboxes": mailboxes, "batch": batch, "threads": threads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=10000)
    parser.add_argument("--size", type=int, default=4096, help="message bytes")
    parser.add_argument("--mailboxes", type=int, default=1)
    parser.add_argument("--batch", type=int, default=BATCH,
                        help="files between two fsyncs of new/ (default: a claim's, "
                        "[delivery] batch_size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write (default: a temporary directory, removed)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="maildir-ceiling-", dir=args.dir))
    try:
        result = ceiling(root, args.messages, args.size, args.mailboxes, args.batch,
                         args.threads)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Maildir delivery of a repeated batch against a first attempt, over full mailboxes.

A repeated claim (``attempts > 1``) looks for an earlier copy in its mailbox before it
writes; this is the drain after a node outage. ``--claims`` claims (4 KiB) go to
``--mailboxes`` mailboxes that already hold ``--files`` files each (a tenth in a folder),
none of them an earlier copy; each round delivers one first-attempt batch and one
repeated batch, and the written copies are removed between batches.

    python benchmarks/maildir_repeat.py --claims 20 --mailboxes 20
    python benchmarks/maildir_repeat.py --claims 250 --mailboxes 50
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mailqueue.mailbox.maildir import MaildirStore, ensure_maildir, mailbox_path
from mailqueue.queue.values import Claim

BODY = b"Subject: x\r\n\r\n" + b"y" * 3900


def populate(root: Path, mailboxes: int, files: int) -> None:
    """Mail from before: sizes around a copy's, in new/, cur/ and a folder's cur/."""
    rng = random.Random(1)
    for m in range(mailboxes):
        box = mailbox_path(root, f"u{m}@example.test")
        ensure_maildir(box)
        (box / ".Archive" / "cur").mkdir(parents=True)
        for i in range(files):
            sub = ".Archive/cur" if i % 10 == 0 else "cur" if i % 4 else "new"
            name = f"15000{i:05d}.M{i}P{m}.oldhost" + (":2,S" if "cur" in sub else "")
            (box / sub / name).write_bytes(b"z" * rng.randrange(3000, 5000))


def batch(store: MaildirStore, claims: int, mailboxes: int, attempts: int,
          round_: int) -> float:
    """Seconds to deliver one batch; its copies are removed afterwards."""
    due = [Claim(recipient_id=i, queue_id=f"R{round_:03d}{attempts}{i:07d}",
                 address=f"u{i % mailboxes}@example.test", store="vmail",
                 attempts=attempts, mail_from="s@src.test", received_at=1_796_000_000.0,
                 helo="h", peer="127.0.0.1", body=BODY) for i in range(claims)]
    start = time.perf_counter()
    outcomes = store.deliver(due)
    seconds = time.perf_counter() - start
    assert all(o is None for o in outcomes), outcomes
    for m in range(mailboxes):
        new = mailbox_path(store.root, f"u{m}@example.test") / "new"
        for entry in os.scandir(new):
            if ".q" in entry.name:
                os.unlink(entry.path)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--mailboxes", type=int, default=20)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        populate(root, args.mailboxes, args.files)
        store = MaildirStore("vmail", root, "mx.test")
        batch(store, 1, 1, 1, 999)  # start the writer threads outside the clock
        first, repeat = [], []
        for round_ in range(args.rounds):
            first.append(batch(store, args.claims, args.mailboxes, 1, round_))
            repeat.append(batch(store, args.claims, args.mailboxes, 2, round_))
        store.close()
    print(f"{args.claims} claims, {args.mailboxes} mailboxes of {args.files} files: "
          f"first attempt {statistics.median(first) * 1000:.1f} ms, "
          f"repeated {statistics.median(repeat) * 1000:.1f} ms (medians of {args.rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

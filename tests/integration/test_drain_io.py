"""What a drain writes to an SQLite queue beside the mail it delivers: a claim and a settle
write a few KiB per recipient however large the message, not its body again — no claimed
body sorted through a temporary file, no freed page zeroed into the WAL."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from mailqueue.queue.values import NewMessage, Settlement, new_queue_id
from tests.helpers import opened_store

T0 = 1_700_000_000.0
BODY = b"Subject: drain\r\n\r\n" + (b"x" * 78 + b"\r\n") * 800  # 64 KiB


def written() -> int:
    """Bytes this process has written through write(2) and its kin so far."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"])


async def test_a_claim_and_its_settle_do_not_write_the_bodies_again(tmp_path: Path) -> None:
    url, count = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}", 100
    async with opened_store(url) as store:
        await store.enqueue([
            NewMessage(queue_id=new_queue_id(T0 + i / 1000), mail_from="a@src.test",
                       recipients=((f"u{i % 7}@b.example", "basic"),), body=BODY,
                       received_at=T0, digest=hashlib.sha256(BODY).hexdigest())
            for i in range(count)])
    with sqlite3.connect(tmp_path / "q.db") as db:  # the bodies into the file, out of the WAL
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    async with opened_store(url) as store:
        before = written()
        claims = await store.claim(["basic"], count, "w1", T0, T0 + 60)
        await store.settle(Settlement(delivered=[c.recipient_id for c in claims]), "w1", T0 + 1)
        per_recipient = (written() - before) / count
        assert len(claims) == count and (await store.stats()).messages_pending == 0
    assert [c.queue_id for c in claims] == sorted(c.queue_id for c in claims)
    # A row's own changes and the freelist's: a few KiB, against 64 KiB of body.
    assert per_recipient < 8192, f"{per_recipient:.0f} bytes written per recipient"

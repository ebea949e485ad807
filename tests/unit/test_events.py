"""The event hub: who gets which event, and a subscriber that stops reading is dropped."""

from __future__ import annotations

from mailqueue.events import EventHub
from mailqueue.queue.values import Claim, NewMessage, Settlement


def claim(rid: int) -> Claim:
    return Claim(recipient_id=rid, queue_id=f"Q{rid}", address=f"u{rid}@basic.example",
                 store="basic", attempts=1, mail_from="a@src.test", received_at=100.0,
                 helo="h", peer="127.0.0.1", body=b"x")


async def test_each_subscriber_gets_the_events_it_asked_for() -> None:
    hub = EventHub()
    every, queued_only = hub.subscribe(), hub.subscribe(["queued"])
    hub.observe_accepted(NewMessage(queue_id="Q1", mail_from="a@src.test",
                                    recipients=(("u1@basic.example", "basic"),), body=b"hi",
                                    received_at=100.0))
    hub.observe_settlement(Settlement(delivered=[1], deferred=[(2, 200.0, "node down")],
                                      bounced=[(3, "550 no")]),
                           [claim(1), claim(2), claim(3)], now=150.0)
    names = [f.split("\nevent: ")[1].split("\n")[0] for f in await every.next_frames(0.1)]
    assert names == ["queued", "delivered", "deferred", "bounced"]
    assert len(await queued_only.next_frames(0.1)) == 1
    assert await queued_only.next_frames(0.01) == []  # nothing more: the wait times out


async def test_a_subscriber_that_falls_behind_is_dropped_and_told() -> None:
    hub = EventHub(buffer=3)
    dropped: list[bool] = []
    slow = hub.subscribe()
    slow.on_drop = lambda: dropped.append(True)
    for i in range(4):
        hub.publish("counts", {"n": i})
    assert slow.dropped and dropped == [True] and not hub.listening
    assert await slow.next_frames(0.1) == []  # its buffer is freed
    hub.publish("counts", {"n": 5})  # no one listens: nothing is kept


async def test_closing_ends_every_subscription() -> None:
    hub = EventHub()
    sub = hub.subscribe()
    hub.close()
    assert sub.closed and not hub.listening
    assert await sub.next_frames(10) == []  # returns at once

"""Mail log lines for the tests, in the forms the servers write them.

Postfix: the lines a real Postfix 3.7 writes for a message received over SMTP and
delivered (``smtpd`` ``client=``, ``cleanup`` ``message-id=``, ``qmgr`` ``from=<...>,
size=, nrcpt=``, a delivery agent's ``to=<...>, relay=..., status=...``, ``qmgr``
``removed``), as ``tests/integration/test_traffic_postfix.py`` sees them from a running
one; syslog's time form (``Jun  6``) or ``maillog_file``'s (``Jun 06``).

Exim: main-log lines modelled on the forms Exim's specification describes (chapter "Log
files": "Logging message reception", "Logging deliveries", "Deferred deliveries",
"Delivery failures", "Completion"), since Exim cannot be installed beside Postfix here.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Iterator, Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

_IDS = itertools.count(0x1A2B3C0)


@dataclasses.dataclass(frozen=True)
class Sent:
    """A message as a test sends it."""

    at: float
    sender: str
    recipients: tuple[str, ...]
    size: int


def syslog_time(ts: float, zone: ZoneInfo, padded_zero: bool = False) -> str:
    moment = datetime.fromtimestamp(ts, zone)
    day = f"{moment.day:02d}" if padded_zero else f"{moment.day:2d}"
    return f"{moment:%b} {day} {moment:%H:%M:%S}"


def queue_id() -> str:
    return f"{next(_IDS):X}"[:7] + "F0A1"


def postfix_message(message: Sent, zone: ZoneInfo, host: str = "mx1", padded_zero: bool = False,
                    defer_first: bool = False) -> list[tuple[float, str]]:
    """``(time, line)`` for one message: arrival, one delivery per recipient (the first
    deferred once when ``defer_first``), removal."""
    qid = queue_id()
    t = message.at

    def line(at: float, program: str, pid: int, text: str) -> tuple[float, str]:
        return at, (f"{syslog_time(at, zone, padded_zero)} {host} {program}[{pid}]: "
                    f"{qid}: {text}")

    out = [line(t, "postfix/smtpd", 4100, "client=client.example[192.0.2.10]"),
           line(t, "postfix/cleanup", 4101, f"message-id=<{qid}@client.example>"),
           line(t + 0.2, "postfix/qmgr", 4090, f"from=<{message.sender}>, "
                f"size={message.size}, nrcpt={len(message.recipients)} (queue active)")]
    delivered = t + 0.5
    for index, rcpt in enumerate(message.recipients):
        if defer_first and index == 0:
            out.append(line(delivered, "postfix/smtp", 4102,
                            f"to=<{rcpt}>, relay=none, delay=0.3, delays=0.1/0/0.2/0, "
                            "dsn=4.4.1, status=deferred (connect to mbox.example[192.0.2.20]:"
                            "25: Connection refused)"))
            out.append(line(delivered + 60, "postfix/qmgr", 4090, f"from=<{message.sender}>, "
                            f"size={message.size}, nrcpt={len(message.recipients)} "
                            "(queue active)"))
            delivered += 60
        out.append(line(delivered, "postfix/smtp", 4102,
                        f"to=<{rcpt}>, relay=mbox.example[192.0.2.20]:25, delay=0.5, "
                        "delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: "
                        "queued as 4XyZ)"))
    out.append(line(delivered + 0.1, "postfix/qmgr", 4090, "removed"))
    return out


def postfix_log(messages: Sequence[Sent], zone: ZoneInfo, **options: bool) -> list[str]:
    """The lines of all ``messages``, in time order (interleaved as a busy server's are)."""
    timed = [pair for m in messages for pair in postfix_message(m, zone, **options)]
    timed.sort(key=lambda pair: pair[0])
    return [text for _, text in timed]


def noise(ts: float, zone: ZoneInfo, rng: random.Random, others_only: bool = False) -> str:
    """A line of another program, as a shared syslog file holds them, or (unless
    ``others_only``) one of Postfix's that is not about a message."""
    stamp = syslog_time(ts, zone)
    others = [
        f"{stamp} mx1 CRON[812]: (root) CMD (command -v debian-sa1 > /dev/null)",
        f"{stamp} mx1 dovecot: imap-login: Login: user=<jane>, method=PLAIN, "
        "rip=192.0.2.7, lip=192.0.2.1",
        f"{stamp} mx1 kernel: [12345.678] eth0: link up",
        f"{stamp} mx1 systemd[1]: Started Daily apt upgrade and clean activities.",
        f"{stamp} mx1 last message repeated 3 times",
    ]
    postfix = [
        f"{stamp} mx1 postfix/anvil[990]: statistics: max connection rate 3/60s for "
        "(smtp:192.0.2.10) at Jun 26 17:03:01",
        f"{stamp} mx1 postfix/smtpd[4100]: connect from client.example[192.0.2.10]",
        f"{stamp} mx1 postfix/smtpd[4100]: disconnect from client.example[192.0.2.10] "
        "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
    ]
    return rng.choice(others if others_only else others + postfix)


def exim_message(message: Sent, zone: ZoneInfo, pid: bool = False,
                 offset: bool = False, received_recipients: bool = False) -> Iterator[str]:
    """Exim main-log lines for one message: its arrival, each recipient delivered (a
    local delivery for the first, ``->`` for the third, the second deferred once), its
    completion."""
    serial = next(_IDS)
    message_id = f"1h{serial % 10000:04d}-000{serial % 1000:03d}-Ab"

    def stamp(ts: float) -> str:
        moment = datetime.fromtimestamp(ts, zone)
        text = f"{moment:%Y-%m-%d %H:%M:%S}"
        if offset:
            text += f" {moment:%z}"
        return text + (" [2301]" if pid else "")

    tail = f" for {' '.join(message.recipients)}" if received_recipients else ""
    yield (f"{stamp(message.at)} {message_id} <= {message.sender} "
           f"H=client.example (helo.client.example) [192.0.2.10] P=esmtp "
           f"S={message.size} id={serial}@client.example T=\"Invoice for June\"{tail}")
    t = message.at + 1
    for index, rcpt in enumerate(message.recipients):
        local = rcpt.partition("@")[0]
        if index == 0:
            yield (f"{stamp(t)} {message_id} => {local} <{rcpt}> R=localuser "
                   "T=local_delivery")
        elif index == 1:
            yield (f"{stamp(t)} {message_id} == {rcpt} R=dnslookup T=remote_smtp "
                   "defer (111): Connection refused")
            yield (f"{stamp(t + 30)} {message_id} => {rcpt} R=dnslookup T=remote_smtp "
                   "H=mbox.example [192.0.2.20] C=\"250 OK id=1h2\"")
        elif index == 2:
            yield f"{stamp(t + 30)} {message_id} -> {rcpt} R=dnslookup T=remote_smtp"
        else:
            yield (f"{stamp(t + 30)} {message_id} ** {rcpt} R=dnslookup T=remote_smtp: "
                   "SMTP error from remote mail server after RCPT TO:<x>: 550 Unknown user")
    yield f"{stamp(t + 31)} {message_id} Completed"

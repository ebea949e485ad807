#!/usr/bin/env python3
"""Delivery of a held queue into real mail servers: mailqueue against Postfix, same run.

Two comparisons, each side handed the same ``--messages`` messages of ``--size`` bytes,
one recipient each over ``--mailboxes`` mailboxes:

- **LMTP into Dovecot.** mailqueue: the queue is filled through its store inside an active
  window, a worker-only server (``serve --role worker``) starts on it, the window is ended,
  and the worker drains into a private Dovecot (:mod:`mailqueue.testing.dovecot`) through
  an ``lmtp`` store. Postfix: a private instance (:mod:`mailqueue.testing.postfix`) takes
  the same messages over SMTP while ``defer_transports = lmtp`` holds its LMTP transport
  (``virtual_transport = lmtp:inet:...``); once every message sits in its deferred queue,
  ``defer_transports`` is emptied, Postfix reloaded and flushed (``postqueue -f``), and it
  delivers into a fresh private Dovecot of its own, configured the same way.
- **SMTP into a sink.** The same, with an ``smtp`` store relaying to Postfix's
  ``smtp-sink`` against Postfix relaying to a sink of its own (``relayhost``, held by
  ``defer_transports = smtp``). Each sink dumps what it receives into one file, which is
  how the messages are counted.

Each side's clock runs from the end of its window (mailqueue: the window's end is
committed to the queue; Postfix: ``postfix reload`` is started) to the last message
written (the newest Maildir file's, or the sink's dump file's, modification time). Postfix
runs at the concurrency mailqueue's store has (``--connections`` for each destination,
from the first delivery on: no slow start), with ``in_flow_delay = 0``; its other
settings are those of the rig (see ``POSTFIX_*`` below). mailqueue runs its defaults,
with the store's ``connections``. Each round runs the four drains, mailqueue first in odd
rounds and Postfix first in even ones; ratios are the medians of the rounds' own ratios.
With ``--ceiling`` each round also hands the same messages straight to the LMTP store
(and the SMTP store) with no queue and no server: the backend's ceiling as mailqueue's
client sees it. Every mailqueue drain is checked (each message delivered once); every
Postfix drain is counted (each mailbox its share).

    python benchmarks/postfix_delivery.py                       # 2,000 messages, 5 rounds
    python benchmarks/postfix_delivery.py --rounds 7 --ceiling --docs

Needs root (Postfix), Postfix (with ``smtp-sink``) and Dovecot with LMTP. Results go to
benchmarks/postfix_delivery.json; ``--docs`` rewrites the table between the
``<!-- postfix-delivery:start -->`` and ``<!-- postfix-delivery:end -->`` markers in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _docs  # benchmarks/_docs.py: this script's folder is on sys.path
from lmtp_drain import body, fill

from mailqueue import loadtest
from mailqueue.config import load_config
from mailqueue.control.windows import Window, WindowState
from mailqueue.endpoint import parse_endpoint
from mailqueue.mailbox._session import Kind, Settings
from mailqueue.mailbox.remote import RemoteStore
from mailqueue.queue.sqlstore import SqlQueueStore
from mailqueue.queue.values import Claim, new_queue_id
from mailqueue.testing import postfix as postfix_rig
from mailqueue.testing.dovecot import Dovecot, dovecot_binary
from mailqueue.testing.postfix import Postfix
from mailqueue.verify.instance import audit_instance

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "postfix_delivery.json"
DOCS_TABLE = "postfix-delivery"  # its table in docs/performance.md
DOMAIN = "example.test"
SMTP_SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin") or "smtp-sink"
MODES = ("lmtp", "smtp")
WINDOW = "bench"
TIMEOUT = 600.0
# A drain that delivers nothing for this long has stalled. Postfix does, now and then, on a
# loaded machine: its queue manager is not started again after the reload (nothing more is
# logged). Such a drain is run once more, on fresh instances, and the retry is recorded.
STALL = 30.0


def postfix_tuning(connections: int) -> dict[str, str]:
    """What Postfix is given beyond the rig's defaults, for either transport: the
    concurrency mailqueue's store has, from the first delivery on, and no throttling of
    the mail coming in."""
    return {"initial_destination_concurrency": str(connections),
            "default_destination_concurrency_limit": str(connections),
            "lmtp_destination_concurrency_limit": str(connections),
            "smtp_destination_concurrency_limit": str(connections),
            "lmtp_destination_recipient_limit": "50",
            "smtp_destination_recipient_limit": "50",
            "in_flow_delay": "0",
            "default_process_limit": "100",
            # Postfix's own defaults, over the rig's quick retries for tests: held mail
            # stays in the deferred queue until the flush instead of cycling through the
            # active queue every second.
            "queue_run_delay": "300s", "minimal_backoff_time": "300s",
            "maximal_backoff_time": "4000s",
            "smtpd_reject_unlisted_recipient": "no"}


def addresses(args: argparse.Namespace) -> list[str]:
    return [f"u{i % args.mailboxes}@{DOMAIN}" for i in range(args.messages)]


# --- the backends --------------------------------------------------------------------------

class Sink:
    """Postfix's ``smtp-sink`` on a free port, appending every message to one dump file."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mq-sink-"))
        self.root.chmod(0o777)  # smtp-sink writes as the postfix user
        self.dump = self.root / "dump"
        self.port = loadtest.free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._read = 0
        self._count = 0
        self._tail = b""

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._process = subprocess.Popen(
            [SMTP_SINK, "-u", "postfix", "-D", str(self.dump), f"127.0.0.1:{self.port}",
             "100"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("postfix_delivery: smtp-sink did not start")

    def count(self) -> int:
        """Messages in the dump so far (read on from where the last call stopped)."""
        marker = b"\nX-Mail-Args: "
        try:
            with self.dump.open("rb") as dump:
                dump.seek(self._read)
                chunk = dump.read()
        except FileNotFoundError:
            return 0
        self._read += len(chunk)
        text = self._tail + chunk
        self._count += text.count(marker) + (text.startswith(marker[1:]) and not self._tail)
        self._tail = text[-(len(marker) - 1):]
        return self._count

    def queue_ids(self) -> Counter[str]:
        found: Counter[str] = Counter()
        with self.dump.open("rb") as dump:
            for line in dump:
                if line.lower().startswith(b"x-mailqueue-id:"):
                    found[line.split(b":", 1)[1].strip().decode()] += 1
        return found

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        shutil.rmtree(self.root, ignore_errors=True)


def maildir_files(root: Path) -> list[os.DirEntry[str]]:
    found: list[os.DirEntry[str]] = []
    for domain in os.scandir(root):
        for box in os.scandir(domain.path):
            with os.scandir(os.path.join(box.path, "new")) as entries:
                found.extend(entries)
    return found


def count_maildirs(root: Path) -> int:
    stores: list[loadtest.StoreInfo] = [{"name": "vmail", "path": str(root)}]
    return loadtest.count_files(stores)


class Stalled(RuntimeError):
    """Nothing more was delivered for ``STALL`` seconds."""


def wait_delivered(count: Any, messages: int, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    seen, moved = 0, time.monotonic()
    while (now := count()) < messages:
        if now != seen:
            seen, moved = now, time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"postfix_delivery: {what}: {now} of {messages} delivered "
                             f"after {TIMEOUT:.0f}s")
        if time.monotonic() - moved > STALL:
            raise Stalled(f"{what}: {now} of {messages} delivered, none for {STALL:.0f}s")
        time.sleep(0.02)


def written(backend: Dovecot | Sink) -> tuple[float | None, float]:
    """When the first message was written (for the sink: not known) and the last."""
    if isinstance(backend, Sink):
        return None, backend.dump.stat().st_mtime
    mtimes = [entry.stat().st_mtime for entry in maildir_files(backend.mail_root)]
    return min(mtimes), max(mtimes)


def counter(backend: Dovecot | Sink) -> Any:
    if isinstance(backend, Sink):
        return backend.count
    return lambda: count_maildirs(backend.mail_root)


def start_backend(mode: str) -> Dovecot | Sink:
    backend: Dovecot | Sink = Dovecot() if mode == "lmtp" else Sink()
    backend.start()
    return backend


def figures(side: str, mode: str, args: argparse.Namespace, released: float,
            backend: Dovecot | Sink) -> dict[str, Any]:
    first, last = written(backend)
    seconds = max(1e-6, last - released)
    return {"side": side, "mode": mode, "messages": args.messages,
            "seconds": round(seconds, 3), "rate": round(args.messages / seconds, 1),
            "first_after": None if first is None else round(first - released, 3)}


# --- mailqueue -----------------------------------------------------------------------------

def write_config(workdir: Path, mode: str, backend: Dovecot | Sink,
                 args: argparse.Namespace) -> Path:
    if isinstance(backend, Dovecot):
        store = (f'kind = "lmtp"\nhosts = ["{backend.lmtp_host}"]\n'
                 f'verify_path = "{backend.mail_root}"')
    else:
        store = f'kind = "smtp"\nhosts = ["{backend.host}"]'
    path = workdir / "mailqueue.toml"
    path.write_text(f"""
[smtp]
host = "127.0.0.1"
port = 0
hostname = "mx.mailqueue.test"
[queue]
url = "sqlite+aiosqlite:///{workdir / 'queue.db'}"
[delivery]
batch_size = 250
[logging]
format = "json"
level = "info"
[[stores]]
name = "vmail"
domains = ["{DOMAIN}"]
connections = {args.connections}
{store}
""")
    return path


async def open_window(url: str) -> None:
    store = SqlQueueStore(url)
    await store.open()
    try:
        now = time.time()
        await store.save_window(Window(name=WINDOW, stores=(), start=now, end=now + 86400,
                                       state=WindowState.ACTIVE, started_at=now))
    finally:
        await store.close()


async def end_window(url: str) -> float:
    """End the window (as ``mailqueue window end`` does); when the end was asked for."""
    store = SqlQueueStore(url)
    await store.open()
    try:
        known = next(w for w in await store.windows() if w.name == WINDOW)
        asked = time.time()
        await store.save_window(known.ended_now(asked))
        return asked
    finally:
        await store.close()


def mailqueue_run(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"mq-pfbench-{mode}-"))
    backend = start_backend(mode)
    server: loadtest.Server | None = None
    try:
        config = write_config(workdir, mode, backend, args)
        url = f"sqlite+aiosqlite:///{workdir / 'queue.db'}"
        asyncio.run(fill(url, args.messages, args.mailboxes, args.size))
        asyncio.run(open_window(url))
        server = loadtest.Server(config, workdir, False, args.loop)
        server.args += ["--role", "worker"]
        server.start()
        os.sync()
        time.sleep(args.settle)  # the server has read the window; the disk is quiet
        released = asyncio.run(end_window(url))
        wait_delivered(counter(backend), args.messages, f"mailqueue {mode}")
        result = figures("mailqueue", mode, args, released, backend)
        server.stop()
        server = None
        check_mailqueue(mode, config, backend, args)
        return result
    finally:
        if server is not None:
            server.stop()
        backend.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def check_mailqueue(mode: str, config: Path, backend: Dovecot | Sink,
                    args: argparse.Namespace) -> None:
    """Every message delivered once (``mailqueue verify``'s audit; for the sink, by the
    ``X-Mailqueue-Id`` of each copy)."""
    if isinstance(backend, Dovecot):
        audit = audit_instance(load_config(config))
        if not audit.ok or audit.delivered != args.messages:
            raise SystemExit(f"postfix_delivery: mailqueue {mode} did not verify:\n"
                             f"{audit.report()}")
        return
    ids = backend.queue_ids()
    if len(ids) != args.messages or max(ids.values()) != 1:
        raise SystemExit(f"postfix_delivery: mailqueue smtp: {len(ids)} distinct messages "
                         f"at the sink, {sum(ids.values())} copies; {args.messages} queued")


# --- Postfix -------------------------------------------------------------------------------

def postfix_main(mode: str, backend: Dovecot | Sink, args: argparse.Namespace,
                 ) -> dict[str, str]:
    main = postfix_tuning(args.connections)
    if isinstance(backend, Dovecot):
        main |= {"virtual_mailbox_domains": DOMAIN,
                 "virtual_transport": f"lmtp:inet:{backend.lmtp_host}",
                 "defer_transports": "lmtp"}
    else:
        main |= {"relayhost": f"[127.0.0.1]:{backend.port}", "defer_transports": "smtp"}
    return main


def send_to_postfix(port: int, args: argparse.Namespace) -> None:
    """The messages over ``--senders`` SMTP sessions (not timed)."""
    data = body(args.size)
    targets = addresses(args)

    def share(first: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="src.test", timeout=60) as smtp:
            for index in range(first, len(targets), args.senders):
                smtp.sendmail("s@src.test", [targets[index]], data)

    with ThreadPoolExecutor(args.senders) as pool:
        list(pool.map(share, range(args.senders)))


def deferred(pf: Postfix) -> int:
    return sum(len(files) for _, _, files in os.walk(pf.queue_dir / "deferred"))


def postfix_run(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    backend = start_backend(mode)
    pf: Postfix | None = None
    try:
        pf = Postfix(main=postfix_main(mode, backend, args))
        pf.start()
        send_to_postfix(pf.port, args)
        deadline = time.monotonic() + TIMEOUT
        while deferred(pf) < args.messages:  # every message held
            if time.monotonic() > deadline:
                raise SystemExit(f"postfix_delivery: Postfix holds {deferred(pf)} of "
                                 f"{args.messages} in its deferred queue")
            time.sleep(0.1)
        if counter(backend)() != 0:
            raise SystemExit("postfix_delivery: Postfix delivered while its transport was "
                             "deferred")
        pf.set(defer_transports="")
        os.sync()
        time.sleep(args.settle)
        released = time.time()
        pf.reload(settle=0)
        pf.flush()
        wait_delivered(counter(backend), args.messages, f"Postfix {mode}")
        result = figures("postfix", mode, args, released, backend)
        check_postfix(mode, backend, args)
        return result
    finally:
        if pf is not None:
            pf.stop()
        backend.stop()


def check_postfix(mode: str, backend: Dovecot | Sink, args: argparse.Namespace) -> None:
    """Each mailbox has its share (LMTP); the sink has every message (SMTP)."""
    if isinstance(backend, Sink):
        if backend.count() != args.messages:
            raise SystemExit(f"postfix_delivery: Postfix smtp: {backend.count()} messages at "
                             f"the sink, {args.messages} sent")
        return
    expected = Counter(addresses(args))
    found = Counter(f"{entry.name}@{DOMAIN}" for entry in os.scandir(
        backend.mail_root / DOMAIN) for _ in os.listdir(os.path.join(entry.path, "new")))
    if found != expected:
        raise SystemExit("postfix_delivery: Postfix lmtp: the Maildirs do not hold each "
                         "mailbox's share")


# --- no queue: the backend's ceiling --------------------------------------------------------

def ceiling_run(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """The same messages handed to the store in one call: no queue, no server."""
    backend = start_backend(mode)
    try:
        endpoint = backend.lmtp_host if isinstance(backend, Dovecot) else backend.host
        data = body(args.size)
        now = time.time()
        claims = [Claim(recipient_id=i, queue_id=new_queue_id(now + i / 1000),
                        address=address, store="vmail", attempts=1, mail_from="s@src.test",
                        received_at=now, helo="bench", peer="", body=data)
                  for i, address in enumerate(addresses(args))]
        kind: Kind = "lmtp" if mode == "lmtp" else "smtp"
        store = RemoteStore("vmail", [parse_endpoint(endpoint, 25)],
                            Settings(kind=kind, helo="mx.mailqueue.test"),
                            "mx.mailqueue.test", args.connections)
        released = time.time()
        failed = [o for o in store.deliver(claims) if o is not None]
        store.close()
        if failed:
            raise SystemExit(f"postfix_delivery: ceiling {mode}: {len(failed)} failed: "
                             f"{failed[0]}")
        wait_delivered(counter(backend), args.messages, f"ceiling {mode}")
        return figures("ceiling", mode, args, released, backend)
    finally:
        backend.stop()


# --- rounds, summary, docs -----------------------------------------------------------------

def one_round(number: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    sides = ("mailqueue", "postfix") if number % 2 == 0 else ("postfix", "mailqueue")
    for mode in MODES:
        for side in sides:
            runs.append(drain(side, mode, args))
            print(f"round {number + 1}: {runs[-1]}", file=sys.stderr)
        if args.ceiling:
            runs.append(ceiling_run(mode, args))
            print(f"round {number + 1}: {runs[-1]}", file=sys.stderr)
    return runs


def drain(side: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One drain; a stalled one once more (see ``STALL``)."""
    run = mailqueue_run if side == "mailqueue" else postfix_run
    try:
        return run(mode, args)
    except Stalled as exc:
        print(f"stalled, run again: {exc}", file=sys.stderr)
        return {**run(mode, args), "stalled_before": str(exc)}


def summary(rounds: list[list[dict[str, Any]]], mode: str) -> dict[str, Any]:
    def rates(side: str) -> list[float]:
        return [run["rate"] for runs in rounds for run in runs
                if run["side"] == side and run["mode"] == mode]

    ratios = [mq / pf for mq, pf in zip(rates("mailqueue"), rates("postfix"), strict=True)]
    row: dict[str, Any] = {
        "mode": mode, "ratio": round(statistics.median(ratios), 2),
        "ratio_low": round(min(ratios), 2), "ratio_high": round(max(ratios), 2),
        "mailqueue_rate": round(statistics.median(rates("mailqueue"))),
        "postfix_rate": round(statistics.median(rates("postfix")))}
    if rates("ceiling"):
        row["ceiling_rate"] = round(statistics.median(rates("ceiling")))
        row["mailqueue_of_ceiling"] = round(statistics.median(
            mq / top for mq, top in zip(rates("mailqueue"), rates("ceiling"), strict=True)), 2)
    return row


def table(rows: list[dict[str, Any]], args: argparse.Namespace, load: list[float]) -> str:
    names = {"lmtp": "LMTP into Dovecot", "smtp": "SMTP into `smtp-sink`"}
    ceiling = any("ceiling_rate" in row for row in rows)
    head = ["delivery", "mailqueue vs Postfix", "messages/s, mailqueue / Postfix"]
    if ceiling:
        head += ["mailqueue vs the backend's ceiling", "ceiling messages/s"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for row in rows:
        cells = [names[row["mode"]],
                 f"**{row['ratio']:.2f}x** ({row['ratio_low']:.2f} to {row['ratio_high']:.2f})",
                 f"{row['mailqueue_rate']:,} / {row['postfix_rate']:,}"]
        if ceiling:
            cells += [f"{row.get('mailqueue_of_ceiling', 0):.2f}x",
                      f"{row.get('ceiling_rate', 0):,}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Medians of {args.rounds} rounds (the ratio is the median of the rounds' own "
              "ratios, the lowest and the highest in brackets); each drain "
              f"{args.messages:,} messages of {args.size:,} bytes, one recipient each over "
              f"{args.mailboxes} mailboxes, {args.connections} connections a side; "
              f"{os.cpu_count()} cores, shared; load average {load[0]:.1f} when the run "
              f"began, {load[1]:.1f} when it ended."]
    return "\n".join(lines)


def missing() -> str | None:
    if dovecot_binary() is None:
        return "Dovecot with LMTP is not installed (apt-get install dovecot-core dovecot-lmtpd)"
    if not Path(SMTP_SINK).exists():
        return "smtp-sink is not installed (it comes with Debian's postfix)"
    return postfix_rig.missing()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--mailboxes", type=int, default=100)
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=10,
                        help="connections to the backend, for each side")
    parser.add_argument("--senders", type=int, default=4,
                        help="SMTP sessions that fill Postfix (not timed)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds of quiet (after a sync) before each drain")
    parser.add_argument("--ceiling", action="store_true",
                        help="also time each backend with no queue in front of it")
    parser.add_argument("--loop", default="auto", help="mailqueue's event loop")
    parser.add_argument("--docs", action="store_true",
                        help="replace the table in docs/performance.md")
    args = parser.parse_args()
    reason = missing()
    if reason is not None:
        raise SystemExit(f"postfix_delivery: {reason}")
    load_before = os.getloadavg()
    rounds = [one_round(number, args) for number in range(args.rounds)]
    load_after = os.getloadavg()
    rows = [summary(rounds, mode) for mode in MODES]
    RESULTS.write_text(json.dumps({
        "command": " ".join(["python", "benchmarks/postfix_delivery.py", *sys.argv[1:]]),
        "messages": args.messages, "size": args.size, "mailboxes": args.mailboxes,
        "connections": args.connections, "cores": os.cpu_count(),
        "postfix_settings": postfix_tuning(args.connections),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "summary": rows, "rounds": rounds}, indent=1) + "\n")
    text = table(rows, args, [load_before[0], load_after[0]])
    print(text)
    if args.docs:
        _docs.write_table(DOCS_TABLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""scripts/load_test.py (:mod:`mailqueue.loadtest`) against servers it spawns, and the --null
server mode it relies on."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from mailqueue import loadtest as load_test
from mailqueue.queue.nullstore import NullQueueStore
from tests.helpers import BASIC, EXCHANGE, all_files, make_config, message, running, wait_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "load_test.py"

CONFIG = """
[smtp]
host = "127.0.0.1"
port = 2525
hostname = "mx.test"

[delivery]
batch_size = 20
poll_interval = "200ms"

[logging]
level = "info"

[[stores]]
name = "vmail"
path = "unused"
domains = ["example.test"]
"""


def run_script(tmp_path: Path, *args: str, config_text: str = CONFIG) -> dict[str, object]:
    config = tmp_path / "load.toml"
    config.write_text(config_text)
    out = subprocess.run([sys.executable, str(SCRIPT), "--spawn", "-c", str(config), "--json",
                          "--no-progress", *args], capture_output=True, text=True,
                         timeout=90, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(json.loads(out.stdout))


def test_starttls_load_against_a_spawned_server(tmp_path: Path) -> None:
    """--starttls: the spawned copy of a config without TLS gets a self-signed
    certificate, and every session runs STARTTLS before its mail (a session that could
    not would count as an error)."""
    report = run_script(tmp_path, "-n", "30", "-C", "3", "--starttls")
    assert report["starttls"] is True and report["accepted"] == 30 and report["errors"] == {}
    assert (report["lost"], report["duplicated"]) == (0, 0)
    (tmp_path / "w").mkdir()
    copy = tomllib.loads(load_test.spawn_config(tmp_path / "load.toml", tmp_path / "w",
                                                tls=True).read_text())
    assert copy["smtp"]["tls"] == "self-signed" and "tls_dir" not in copy["smtp"]


def test_every_message_is_checked_off_after_a_window(tmp_path: Path) -> None:
    report = run_script(tmp_path, "-n", "40", "-C", "4", "-R", "2", "--mailboxes", "5",
                       "--window", "--size", "700")
    assert report["accepted"] == 40 and report["errors"] == {}
    assert (report["expected"], report["delivered"]) == (80, 80)
    assert (report["lost"], report["duplicated"], report["unexpected"]) == (0, 0, 0)
    assert report["drained"] == 80 and float(report["drain_rate"]) > 0  # type: ignore[arg-type]
    assert report["accept_latency_p99_ms"] is not None
    assert report["server_peak_rss_mb"] and report["server_exit"] == 0
    # The default writer on two CPUs is a child process: its peak RSS is given on its own.
    by_process = report["peak_rss_mb_by_process"]
    assert isinstance(by_process, dict) and by_process["server"] > 0
    assert sum(by_process.values()) == pytest.approx(report["server_peak_rss_mb"], abs=0.2)
    for phase in ("accept_rate_over_time", "drain_rate_over_time"):
        rates = report[phase]
        assert isinstance(rates, dict) and rates["first"] > 0 and rates["last"] > 0, phase
        assert rates["last_vs_first"] == pytest.approx(rates["last"] / rates["first"], 0.01)
    disk = report["disk_use_mb"]
    assert isinstance(disk, dict) and disk["queue"] > 0 and disk["maildirs"] > 0


def test_a_postgresql_config_gets_a_database_of_its_own_and_verify(tmp_path: Path,
                                                                    pg_url: str) -> None:
    """A config whose queue is on PostgreSQL: the spawned server's queue is a new database
    on that server (dropped at the end), the queue is seen empty after the window, and
    --verify runs mailqueue verify on what is left."""
    from tests import pg

    before = {name for name in pg.database_names() if name.startswith("mq_load_")}
    config = CONFIG.replace("[delivery]", f'[queue]\nurl = "{pg_url}"\n\n[delivery]')
    report = run_script(tmp_path, "-n", "30", "-C", "3", "--window", "--verify",
                        config_text=config)
    assert (report["accepted"], report["delivered"], report["lost"]) == (30, 30, 0)
    assert report["verify_ok"] is True and report["verify_exit"] == 0
    # The verify process's own peak, not this test's (which a child would inherit).
    assert 20 < float(report["verify_peak_rss_mb"]) < 500  # type: ignore[arg-type]
    assert float(report["queue_empty_seconds"]) >= 0  # type: ignore[arg-type]
    assert report["disk_use_mb"]["queue"] > 0  # type: ignore[index]
    after = {name for name in pg.database_names() if name.startswith("mq_load_")}
    assert after <= before  # its database is dropped
    tenths = report["accept_rate_by_tenth"]
    assert isinstance(tenths, list) and len(tenths) == 10


def test_an_unreachable_postgresql_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "load.toml"
    config.write_text(CONFIG.replace(
        "[delivery]", '[queue]\nurl = "postgresql+asyncpg://postgres@127.0.0.1:1/x"\n\n'
        "[delivery]"))
    out = subprocess.run([sys.executable, str(SCRIPT), "--spawn", "-c", str(config), "-n",
                          "5"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("load_test: cannot make a database")
    assert len(out.stderr.strip().splitlines()) == 1


def test_fixed_rate_light_load_reports_end_to_end_delay(tmp_path: Path) -> None:
    report = run_script(tmp_path, "--rate", "50", "-n", "10", "-C", "1", "--loop", "asyncio")
    assert report["loop"] == "asyncio" and report["lost"] == 0 and report["delivered"] == 10
    assert report["e2e_p50_ms"] is not None


def test_null_mode_accepts_and_stores_nothing(tmp_path: Path) -> None:
    report = run_script(tmp_path, "--null", "-n", "20", "-C", "2")
    assert report["mode"] == "null" and report["accepted"] == 20
    assert "lost" not in report


async def test_null_server_answers_250_without_storing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store = NullQueueStore()
    async with running(config, queue=store, run_worker=False) as app:
        assert app.port
        _, reply = await aiosmtplib.send(message("null"), sender="a@src.test",
                                         recipients=["alice@basic.example"],
                                         hostname="127.0.0.1", port=app.port)
        assert reply.startswith("2.0.0 Ok: queued as ")
    assert store.messages == 1 and store.bytes > 0
    assert all_files(tmp_path / "mail") == []
    assert not (tmp_path / "queue.db").exists()


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[aiosmtplib.SMTP]:
    """An aiosmtplib client connected to 127.0.0.1:``port``; QUIT at the end."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    await smtp.connect()
    try:
        yield smtp
    finally:
        await smtp.quit()


async def test_transaction_delivers_the_body_sendmail_would(tmp_path: Path) -> None:
    """The script's own MAIL/RCPT/DATA with the body in wire form: dot-led lines arrive
    whole, a refused recipient is reported by code, the rest is delivered."""
    config = make_config(tmp_path)
    body = (b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\nmiddle . dot\r\n.\r\n"
            b"last\r\n")
    async with running(config) as app, client(app.port) as smtp:
        refused, reply = await load_test.transaction(
            smtp, "a@src.test", [f"alice@{BASIC}", f"nobody@{EXCHANGE}"],
            load_test.wire_form(body))
        assert refused == {f"nobody@{EXCHANGE}": 550}
        assert reply.startswith("2.0.0 Ok: queued as ")
        for nobody in ([f"nobody@{EXCHANGE}"], [f"nobody@{EXCHANGE}"] * 2):
            with pytest.raises(aiosmtplib.SMTPResponseException) as refusal:
                await load_test.transaction(smtp, "a@src.test", nobody,
                                            load_test.wire_form(body))
            assert refusal.value.code == 550  # every recipient refused: no DATA
            await smtp.rset()
        # A body that starts with a dot
        _, reply = await load_test.transaction(smtp, "a@src.test", [f"bob@{BASIC}"],
                                               load_test.wire_form(b".first\r\n"))
        assert reply.startswith("2.0.0 Ok: queued as ")
        await wait_for(lambda: len(all_files(tmp_path / "mail")) == 2)
    alice, bob = (next((tmp_path / "mail/basic" / BASIC / box / "new").iterdir()).read_bytes()
                  for box in ("alice", "bob"))
    # Maildir files end lines with LF
    assert alice.endswith(body.replace(b"\r\n", b"\n")) and bob.endswith(b"\n.first\n")


async def test_transaction_declares_the_size_so_an_oversize_message_is_refused_at_mail(
        tmp_path: Path) -> None:
    config = make_config(tmp_path)  # max_message_size 64 KiB
    async with running(config) as app, client(app.port) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refusal:
            await load_test.transaction(smtp, "a@src.test", [f"alice@{BASIC}"],
                                        load_test.wire_form(b"x" * 70_000 + b"\r\n"))
        assert refusal.value.code == 552
        await smtp.rset()
        _, reply = await load_test.transaction(smtp, "a@src.test", [f"alice@{BASIC}"],
                                               load_test.wire_form(b"small\r\n"))
        assert reply.startswith("2.0.0 Ok: queued as ")


def test_make_body_ends_each_line_with_crlf() -> None:
    plan = load_test.Plan(messages=1, duration=None, rate=None, connections=1, size=0,
                          recipients=1, addresses=["a@b.test"], sender="s@b.test",
                          run_id="r", per_connection=0)
    for size in range(150, 400):
        plan.size = size
        body = load_test.make_body(plan, 7, ["a@b.test"])
        assert body.endswith(b"\r\n") and len(body) == max(size, len(body))
        assert body.count(b"\r") == body.count(b"\r\n") == body.count(b"\n")


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two CPUs")
def test_the_script_runs_on_the_cpus_a_pinned_server_leaves(tmp_path: Path) -> None:
    mine = sorted(os.sched_getaffinity(0))
    pinned = CONFIG + f'''
[server]
cpus = "{mine[0]}"
'''
    report = run_script(tmp_path, "-n", "5", "-C", "1", "--null", config_text=pinned)
    assert report["client_cpus"] == ",".join(map(str, mine[1:]))
    report = run_script(tmp_path, "-n", "5", "-C", "1", "--null", "--cpus", "all",
                        config_text=pinned)
    assert report["client_cpus"] == "all"
    report = run_script(tmp_path, "-n", "5", "-C", "1", "--null")
    assert report["client_cpus"] == "all"  # an unpinned server: the script stays unpinned


def test_a_bad_cpu_list_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "load.toml").write_text(CONFIG)
    out = subprocess.run([sys.executable, str(SCRIPT), "--spawn", "-c",
                          str(tmp_path / "load.toml"), "--cpus", "1-x"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--cpus: bad CPU list '1-x'" in out.stderr
    assert "Traceback" not in out.stderr

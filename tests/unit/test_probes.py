"""Mailbox probes: the ``[probes]`` table, who probes, how a reply is read, the rounds,
and the two moments the report states per store."""

from __future__ import annotations

import asyncio
import copy
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mailqueue.access import Closed
from mailqueue.clock import ScaledClock
from mailqueue.control.nodes import node_of
from mailqueue.control.windows import Inbound, Window, WindowState
from mailqueue.mailbox.maildir import resolve_owner
from mailqueue.queue.values import RecipientOutcome, RecipientState
from mailqueue.rehearsal.moments import store_access
from mailqueue.rehearsal.probes import (
    Answer,
    ProbeLog,
    Prober,
    ProbeResult,
    ProbeUser,
    choose_users,
    classify_refusal,
    closed_to,
    mail_owner,
    probe_way,
)
from mailqueue.rehearsal.scenario import ScenarioError, load_scenario, scenario_from_dict
from mailqueue.testing.dovecot import access_binary

SCENARIOS = Path(__file__).resolve().parents[2] / "config" / "scenarios"

BASE: dict[str, Any] = {
    "scenario": {"name": "t", "timezone": "UTC", "start": "2019-06-26 12:00",
                 "end": "2019-06-26 20:00", "speed": 3600},
    "stores": [{"name": "basic", "domains": ["basic.example", "b.example"], "nodes": 3},
               {"name": "hosted-exchange", "domains": ["exchange.example"]}],
}


def scenario(**probes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["probes"] = probes
    return data


def error(**probes: Any) -> str:
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(scenario(**probes), "s.toml")
    return str(info.value)


# --- the [probes] table -----------------------------------------------------------------


@pytest.mark.parametrize(("probes", "expected"), [
    ({"interval": "often"}, "probes.interval: not a duration: 'often' (use seconds or "
                            "units like 90s, 15m, 1h30m, 2d)"),
    ({"interval": 0}, "probes.interval: Input should be greater than 0"),
    ({"users": 0}, "probes.users: give a number of probe users per store (e.g. 2), or a "
                   "table of store = number (e.g. { basic = 2 })"),
    ({"users": "two"}, "probes.users: give a number of probe users per store"),
    ({"users": {"basic": -1}}, "probes.users: give a number of probe users per store"),
    ({"users": {"nosuch": 1}}, "probes.users: unknown store 'nosuch' (known: basic, "
                               "hosted-exchange)"),
    ({"users": {"basic": 0}}, "probes.users: every store has 0 probe users; give at least "
                              "one"),
    ({"addresses": ["alice"]}, "probes.addresses: [0] 'alice' is not a mailbox address "
                               "(local@domain)"),
    ({"addresses": ["A@basic.example", "a@basic.example"]},
     "probes.addresses: duplicate address 'a@basic.example'"),
    ({"addresses": []}, "probes.addresses: give at least one address, or leave addresses "
                        "out"),
    ({"addresses": ["a@basic.example", "bob@nowhere.example"]},
     "probes.addresses[1]: 'bob@nowhere.example' is in no store's domains (basic.example, "
     "b.example, exchange.example)"),
    ({"addresses": ["a@basic.example"], "users": 1},
     "probes: give users (a number per store) or addresses, not both"),
    ({"via": "pop3"}, "probes.via: Input should be 'auto', 'imap' or 'decision'"),
    ({"connections": 0}, "probes.connections: Input should be greater than or equal to 1"),
    ({"colour": "red"}, "probes.colour: unknown key"),
])
def test_bad_probes_name_the_key(probes: dict[str, Any], expected: str) -> None:
    message = error(**probes)
    assert message.startswith(f"s.toml: {expected}"), message
    assert "\n" not in message


def test_the_june_scenario_probes_every_node() -> None:
    june = load_scenario(SCENARIOS / "june-2019-upgrade.toml")
    assert june.file.probes is not None and june.file.probes.interval == 900
    users = choose_users(june)
    assert sorted(u.node for u in users) == sorted(june.node_names())


# --- who probes -------------------------------------------------------------------------


def test_users_spread_over_the_nodes() -> None:
    loaded = scenario_from_dict(scenario())
    users = choose_users(loaded)  # one per node by default
    assert [u.node for u in users] == ["basic-1", "basic-2", "basic-3", "hosted-exchange-1"]
    for user in users:
        count = 3 if user.store == "basic" else 1
        assert node_of(user.store, count, user.address) == user.node
        assert user.address.startswith("user")
    four = choose_users(scenario_from_dict(scenario(users={"basic": 4})))
    assert [u.node for u in four] == ["basic-1", "basic-2", "basic-3", "basic-1"]
    assert len({u.address for u in four}) == 4
    assert all(u.address.endswith("@basic.example") for u in four)


def test_addresses_are_probed_as_given() -> None:
    loaded = scenario_from_dict(scenario(addresses=["Alice@B.example", "bob@exchange.example"]))
    users = choose_users(loaded)
    assert [(u.address, u.store) for u in users] == [("alice@b.example", "basic"),
                                                     ("bob@exchange.example",
                                                      "hosted-exchange")]
    assert users[0].node == node_of("basic", 3, "alice@b.example")


# --- how a reply is read ----------------------------------------------------------------


def test_a_refusal_is_read_as_its_kind() -> None:
    window = Window(name="upgrade", stores=("basic",), start=0, end=3600,
                    inbound=Inbound.QUEUE, state=WindowState.ACTIVE)
    for closed in (Closed(store="basic", window=window), Closed(store="basic", node="basic-2")):
        reason = closed.reason()
        assert classify_refusal(f"[ALERT] {reason}") == closed.kind
        assert classify_refusal(reason) == closed.kind
    assert classify_refusal("[AUTHENTICATIONFAILED] Authentication failed.") == "error"
    assert classify_refusal("[UNAVAILABLE] Temporary authentication failure.") == "error"


# --- rounds -----------------------------------------------------------------------------


def test_a_slow_round_skips_the_next_rather_than_piling_up() -> None:
    user = ProbeUser("user00000@basic.example", "basic", "basic-1")
    log = ProbeLog(via="imap", why="", interval=3600.0, users=(user, user))
    running = []
    lock = threading.Lock()

    def answer(_: ProbeUser) -> Answer:
        with lock:
            running.append(1)
        time.sleep(0.06)
        return Answer("available", messages=0)

    async def main() -> None:
        clock = ScaledClock(0.0, 3600.0 / 0.02)  # a round due every 20 ms
        stop = asyncio.Event()
        task = asyncio.create_task(Prober(log, clock, answer, threads=2).run(stop))
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert log.skipped, "rounds due while one was under way are skipped"
    assert 2 <= len(log.rounds) <= 6
    assert len(log.results) == len(running) == 2 * len(log.rounds)
    assert [r.round for r in log.results] == sorted(r.round for r in log.results)


# --- the two moments --------------------------------------------------------------------


def results(user: ProbeUser, outcomes: str, start: float = 0.0) -> list[ProbeResult]:
    """One result per letter, 100 s apart: a(vailable), m(aintenance), n(ode down), e(rror)."""
    kinds = {"a": "available", "m": "maintenance", "n": "node-down", "e": "error"}
    return [ProbeResult(start + 100 * i, i, user, Answer(kinds[c]))
            for i, c in enumerate(outcomes)]


ONE = ProbeUser("user00000@basic.example", "basic", "basic-1")
TWO = ProbeUser("user00003@basic.example", "basic", "basic-2")
WINDOW = Window(name="upgrade", stores=("basic",), start=100, end=400, inbound=Inbound.QUEUE,
                state=WindowState.ENDED, started_at=100, ended_at=400)


def outcome(received: float, state: RecipientState, settled: float | None = None,
            address: str = ONE.address) -> RecipientOutcome:
    return RecipientOutcome(queue_id="q", address=address, store="basic", state=state,
                            received_at=received, settled_at=settled, attempts=1,
                            last_error=None)


def test_read_again_waits_for_every_refused_user() -> None:
    log = ProbeLog(via="decision", why="", interval=100, users=(ONE, TWO),
                   results=results(ONE, "ammmmaaaaa") + results(TWO, "ammmmnnnaa"))
    mail = [outcome(150, RecipientState.DELIVERED, 650),
            outcome(390, RecipientState.DELIVERED, 820, TWO.address),
            outcome(450, RecipientState.DELIVERED, 990),  # after the window: not counted
            outcome(200, RecipientState.BOUNCED, 700)]
    access = store_access(log, "basic", [WINDOW], mail, finished_at=1000)
    assert access.last_refusal == 700
    assert access.read_again == 800  # TWO's first login after their last refusal
    assert access.mail_arrived == 820
    assert (access.window_mail, access.window_delivered, access.window_pending) == (3, 2, 0)
    assert access.logins == {"available": 9, "maintenance": 8, "node-down": 3, "error": 0}


def test_no_moment_while_refused_or_queued_at_the_end() -> None:
    log = ProbeLog(via="decision", why="", interval=100, users=(ONE, TWO),
                   results=results(ONE, "amma") + results(TWO, "ammn"))
    mail = [outcome(150, RecipientState.DELIVERED, 450),
            outcome(160, RecipientState.QUEUED)]
    access = store_access(log, "basic", [WINDOW], mail, finished_at=400)
    assert access.read_again is None and access.last_refusal == 300
    assert access.mail_arrived is None and access.window_pending == 1
    never = store_access(ProbeLog(via="decision", why="", interval=100, users=(ONE,),
                                  results=results(ONE, "aaee")), "basic", [], [], 400)
    assert never.read_again is None and never.last_refusal is None
    assert never.window_mail == 0 and never.mail_arrived is None


# --- how probes run ---------------------------------------------------------------------


def test_the_scenario_may_ask_for_the_decision(tmp_path: Path) -> None:
    loaded = scenario_from_dict(scenario(via="decision"))
    assert probe_way(loaded, tmp_path) == ("decision", 'probes.via = "decision"')


def test_without_dovecot_probes_ask_the_decision(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailqueue.testing.dovecot.access_binary", lambda: None)
    missing = ("decision", "Dovecot with IMAP is not installed: apt-get install dovecot-core "
               "dovecot-imapd dovecot-pop3d")
    assert probe_way(scenario_from_dict(scenario()), tmp_path) == missing
    with pytest.raises(ScenarioError, match=r'^s.toml: probes.via: "imap" cannot run here: '
                                            "Dovecot with IMAP is not installed: apt-get"):
        probe_way(scenario_from_dict(scenario(via="imap"), "s.toml"), tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="Dovecot's mail user differs only for root")
def test_maildirs_the_mail_user_cannot_reach() -> None:
    # Not under pytest's tmp_path: only root may enter its parents.
    with tempfile.TemporaryDirectory() as top:
        closed = Path(top) / "closed"
        (closed / "work").mkdir(parents=True)
        Path(top).chmod(0o711)
        closed.chmod(0o700)
        assert closed_to(closed / "work" / "mail", 5000, 5000) == closed
        closed.chmod(0o711)
        assert closed_to(closed / "work" / "mail", 5000, 5000) is None
        closed.chmod(0o700)
        with pytest.raises(ScenarioError) as info:
            probe_way(scenario_from_dict(scenario(via="imap"), "s.toml"), closed / "work")
    message = str(info.value)
    assert message.startswith('s.toml: probes.via: "imap" cannot run here: ')
    if access_binary() is not None:
        assert message.endswith(f"Dovecot's mail user (uid {resolve_owner(mail_owner() or '')[0]})"
                                f" cannot enter {closed}, on the way to the Maildirs: give a "
                                "--workdir it can reach")

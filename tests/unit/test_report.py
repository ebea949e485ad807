"""Report figures: loss and duplication are counted from the Maildir files themselves."""

from __future__ import annotations

from pathlib import Path

from mailqueue.clock import ManualClock
from mailqueue.rehearsal.report import compute_figures, percentile, scan_maildirs
from mailqueue.rehearsal.runner import Observations, Sample, build_config
from mailqueue.rehearsal.scenario import scenario_from_dict
from mailqueue.rehearsal.traffic import Accepted, TrafficSender
from tests.unit.test_scenario import BASE


def drop(root: Path, name: str, seq: int, rcpt: str) -> None:
    box = root / "basic" / rcpt.partition("@")[2] / rcpt.partition("@")[0] / "new"
    box.mkdir(parents=True, exist_ok=True)
    (box / name).write_text(f"Delivered-To: {rcpt}\nX-Rehearsal-Id: {seq}\n\nbody\n")


def observations(tmp_path: Path) -> Observations:
    scenario = scenario_from_dict(dict(BASE), "t.toml")
    obs = Observations(scenario=scenario, speed=3600, seed=1, workdir=tmp_path,
                       config=build_config(scenario, tmp_path, 3600))
    sender = TrafficSender([], ManualClock(0.0), "127.0.0.1", 0, 1, "UTC")
    sender.accepted = [Accepted(seq=1, queue_id="Q1", recipients=("a@basic.example",), at=0),
                       Accepted(seq=2, queue_id="Q2",
                                recipients=("a@basic.example", "b@basic.example"), at=0)]
    obs.sender = sender
    obs.samples = [Sample(at=scenario.start, depth=3, bytes=900, queued=3, delivered=0,
                          bounced=0, accepted=2, oldest=None, held=True)]
    obs.drained = True
    return obs


def test_a_missing_copy_is_lost_and_a_second_copy_duplicated(tmp_path: Path) -> None:
    mail = tmp_path / "mail"
    drop(mail, "f1", 1, "a@basic.example")
    drop(mail, "f2", 2, "a@basic.example")
    drop(mail, "f2-again", 2, "a@basic.example")  # a second copy under another name
    figures = compute_figures(observations(tmp_path), scan_maildirs(mail))
    assert figures["accepted_recipients"] == 3
    assert figures["delivered"] == 2
    assert figures["lost"] == 1  # seq 2 for b@ is nowhere
    assert figures["duplicated"] == 1
    assert figures["peak_depth"] == 3 and figures["peak_bytes"] == 900


def test_nothing_lost_when_every_copy_is_there_once(tmp_path: Path) -> None:
    mail = tmp_path / "mail"
    for seq, rcpt in ((1, "a@basic.example"), (2, "a@basic.example"), (2, "b@basic.example")):
        drop(mail, f"{seq}-{rcpt}", seq, rcpt)
    figures = compute_figures(observations(tmp_path), scan_maildirs(mail))
    assert (figures["lost"], figures["duplicated"], figures["delivered"]) == (0, 0, 3)


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile(list(range(1, 101)), 0.95) == 95

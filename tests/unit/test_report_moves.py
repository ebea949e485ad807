"""The rehearsal report counts each Maildir file once while a reader moves files from
``new/`` to ``cur/``, whichever order the file system lists them in."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailqueue.rehearsal.report import compute_figures, scan_maildirs
from tests.integration.test_maildir_moves import reader
from tests.unit.test_report import drop, observations


@pytest.mark.parametrize("after", [True, False])
def test_a_file_moved_during_the_scan_is_counted_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: bool) -> None:
    mail = tmp_path / "mail"
    for seq, rcpt in ((1, "a@basic.example"), (2, "a@basic.example"), (2, "b@basic.example")):
        drop(mail, f"{seq}-{rcpt}", seq, rcpt)
    (mail / "basic" / "basic.example" / "a" / "cur").mkdir()
    moving = reader(monkeypatch, mail / "basic" / "basic.example" / "a", after=after,
                    cur_first=True)
    figures = compute_figures(observations(tmp_path), scan_maildirs(mail))
    assert len(moving.moved) == 2
    assert (figures["lost"], figures["duplicated"], figures["delivered"]) == (0, 0, 3)


def test_a_file_half_moved_by_link_is_counted_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mail = tmp_path / "mail"
    drop(mail, "1-a", 1, "a@basic.example")
    (mail / "basic" / "basic.example" / "a" / "cur").mkdir()
    moving = reader(monkeypatch, mail / "basic" / "basic.example" / "a", after=False,
                    link=True)
    assert scan_maildirs(mail)[1, "a@basic.example"] == 1
    assert len(moving.moved) == 1

"""The rehearsal report counts recipients an operator deleted as their own term: neither
pending nor lost, and a copy of one in a mailbox is unexpected."""

from __future__ import annotations

from pathlib import Path

from mailqueue.queue.values import RecipientOutcome, RecipientState
from mailqueue.rehearsal.report import compute_figures, figures_text, scan_maildirs
from tests.unit.test_report import drop, observations


def outcome(queue_id: str, address: str, state: RecipientState) -> RecipientOutcome:
    return RecipientOutcome(queue_id=queue_id, address=address, store="basic", state=state,
                            received_at=0.0, settled_at=1.0, attempts=0, last_error=None)


def test_deleted_recipients_are_accounted_for(tmp_path: Path) -> None:
    mail = tmp_path / "mail"
    drop(mail, "f1", 1, "a@basic.example")
    drop(mail, "f2", 2, "a@basic.example")
    obs = observations(tmp_path)
    obs.outcomes = [outcome("Q1", "a@basic.example", RecipientState.DELIVERED),
                    outcome("Q2", "a@basic.example", RecipientState.DELIVERED),
                    outcome("Q2", "b@basic.example", RecipientState.DELETED)]
    figures = compute_figures(obs, scan_maildirs(mail))
    assert (figures["delivered"], figures["deleted"], figures["pending"], figures["lost"]) == \
        (2, 1, 0, 0)
    assert "deleted 1   pending 0" in figures_text(figures)


def test_a_copy_of_a_deleted_recipient_is_unexpected(tmp_path: Path) -> None:
    mail = tmp_path / "mail"
    for seq, rcpt in ((1, "a@basic.example"), (2, "a@basic.example"), (2, "b@basic.example")):
        drop(mail, f"{seq}-{rcpt}", seq, rcpt)
    obs = observations(tmp_path)
    obs.outcomes = [outcome("Q2", "b@basic.example", RecipientState.DELETED)]
    figures = compute_figures(obs, scan_maildirs(mail))
    assert (figures["delivered"], figures["deleted"], figures["unexpected_files"]) == (2, 1, 1)
    assert figures["lost"] == 0

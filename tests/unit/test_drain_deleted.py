"""``window end --wait`` names the recipients an operator deleted during the drain."""

from __future__ import annotations

from mailqueue.cli._drain import DrainSummary


def test_summary_names_deleted_recipients() -> None:
    summary = DrainSummary(delivered=3, bounced=0, held=0, remaining=0, seconds=2.0,
                           timed_out=False, deleted=2)
    assert summary.describe("upgrade") == ("window upgrade: delivered 3, bounced 0 in 2s "
                                           "(1.5 recipients/s); 2 deleted by an operator")

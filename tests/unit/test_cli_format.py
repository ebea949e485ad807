"""Text forms of the queue commands."""

from __future__ import annotations

from mailqueue.cli.queue import format_shape, format_table
from mailqueue.queue.values import MessageView, RecipientView

T0 = 1_700_000_000.0


def test_table_one_line_per_recipient() -> None:
    rcpts = (RecipientView(1, "a@b.example", "basic", "queued", 2, T0 + 60, "maildir: busy",
                           None),
             RecipientView(2, "c@b.example", "basic", "held", 0, T0, None, None))
    view = MessageView("Q1", "s@x.test", T0 - 90, 2048, None, "", "", None, rcpts)
    lines = format_table([view], T0).splitlines()
    assert lines[1].split()[:4] == ["Q1", "1m30s", "2.0K", "s@x.test"]
    assert "in 1m" in lines[1] and "maildir: busy" in lines[1]
    assert lines[2].split()[:2] == ["c@b.example", "held"]
    assert lines[-1] == "-- 1 messages, 2.0K bytes, 2 recipients"
    assert format_table([], T0) == "queue is empty"


def test_shape_rows_and_totals() -> None:
    text = format_shape({"basic": [1, 0, 2], "hx": [0, 1, 0]}, ["5", "10", "10+"])
    rows = [line.split() for line in text.splitlines()]
    assert rows[0] == ["T", "5", "10", "10+"]
    assert rows[1] == ["TOTAL", "4", "1", "1", "2"]
    assert rows[2] == ["basic", "3", "1", "0", "2"]

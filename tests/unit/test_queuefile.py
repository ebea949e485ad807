"""What a look at the queue's path means: lost only when the path says so for certain."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mailqueue.errors import QueueLostError
from mailqueue.queue._queuefile import QueueFile


def _events(logs: list[dict[str, object]]) -> list[tuple[object, object]]:
    """The warnings and errors logged (what an operator is told)."""
    return [(e["event"], e["log_level"]) for e in logs
            if e["log_level"] in ("warning", "error")]


def test_a_path_that_cannot_be_looked_at_is_not_a_lost_file(tmp_path: Path) -> None:
    (tmp_path / "q.db").write_bytes(b"x")
    file = QueueFile.pin(str(tmp_path / "q.db"))
    with capture_logs() as logs:
        for _ in range(3):
            file.observe(None, "cannot check queue file: Permission denied")
            assert file.lost is None
        file.verify()  # the path names the file again: nothing raised
    assert file.unchecked is None
    assert _events(logs) == [("queue_file_unchecked", "warning")]


def test_a_lost_file_stays_lost_while_the_path_cannot_be_looked_at(tmp_path: Path) -> None:
    (tmp_path / "q.db").write_bytes(b"x")
    file = QueueFile.pin(str(tmp_path / "q.db"))
    with capture_logs() as logs:
        (tmp_path / "q.db").rename(tmp_path / "aside.db")
        with pytest.raises(QueueLostError, match="was deleted"):
            file.verify()
        file.observe(None, "cannot check queue file: Permission denied")
        assert file.lost is not None and "was deleted" in file.lost
        assert file.unchecked is None
        (tmp_path / "aside.db").rename(tmp_path / "q.db")
        assert file.check() is None
    assert _events(logs) == [("queue_file_lost", "error"), ("queue_file_found", "warning")]


def test_each_definite_loss_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "var"
    folder.mkdir()
    (folder / "q.db").write_bytes(b"x")
    file = QueueFile(str(folder / "q.db"), (0, 0), announce=False)
    assert "replaced by another file" in (file.check() or "")
    (folder / "q.db").unlink()
    assert "was deleted" in (file.check() or "")
    folder.rmdir()
    assert "directory of queue file" in (file.check() or "")
    folder.write_bytes(b"a file where the directory was")
    assert "directory of queue file" in (file.check() or "")

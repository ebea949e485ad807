"""Driver errors as the queue reports them: a short reason, never SQL text or parameters."""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import SQLAlchemyError

from mailqueue.errors import QueueError, QueueFullError

# SQLite's SQLITE_FULL; PostgreSQL's disk_full (53100).
_FULL_MARKERS = ("database or disk is full", "No space left on device", "could not extend file")


def storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the database's storage is full."""
    orig = getattr(exc, "orig", None)
    driver = exc if orig is None else orig  # SQLAlchemy wraps the driver's error
    code = getattr(driver, "sqlstate", None) or getattr(driver, "pgcode", None)
    if code == "53100" or getattr(driver, "sqlite_errorcode", None) == 13:
        return True
    return any(marker in str(driver) for marker in _FULL_MARKERS)


def reason(exc: BaseException) -> str:
    """The driver's own message, first line only."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def database_error(exc: SQLAlchemyError | OSError | sqlite3.Error) -> QueueError:
    """The :class:`QueueError` to raise for a driver error (:class:`QueueFullError` when the
    storage is full, so the front end answers 452 instead of 451)."""
    if storage_full(exc):
        return QueueFullError(f"queue storage full: {reason(exc)}")
    return QueueError(f"queue database error: {reason(exc)}")

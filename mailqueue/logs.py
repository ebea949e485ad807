"""Structured logging: configured once, by the CLI (or a test), never at import."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


_settings = ("console", "info")


def settings() -> tuple[str, str]:
    """The format and level :func:`configure_logging` was last called with (a helper
    process logs the same way)."""
    return _settings


def configure_logging(fmt: str = "console", level: str = "info",
                      stream: TextIO | None = None) -> None:
    """Console lines by default, one JSON object per line with ``fmt="json"``.

    Once per process: a logger is built on its first use and keeps this configuration."""
    global _settings
    _settings = (fmt, level)
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        # A logger is built on its first call, not on every call (a large part of a line's cost).
        cache_logger_on_first_use=True,
    )
    # aiosmtpd logs every connection at INFO through stdlib logging; keep it for debugging.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if level == "debug" else
                                           logging.WARNING)

"""Verify: the conservation equation and every exception, as data."""

from __future__ import annotations

from typing import Any

from mailqueue.service.context import Context
from mailqueue.verify.audit import Audit
from mailqueue.verify.instance import audit_queue


async def run_audit(ctx: Context) -> Audit:
    """Read the ledger, then the mailboxes (after, so a delivery in between is not
    missed), off the event loop and in bounded memory."""
    return await audit_queue(ctx.config, ctx.queue)


def verdict(result: Audit, strict: bool) -> str:
    """The last line of ``mailqueue verify``."""
    passed = result.passed(strict)
    return ("OK: nothing lost, nothing delivered twice" if passed else
            "FAILED: see the exceptions above" if not result.ok else
            "FAILED (--strict): a Message-ID was accepted as several messages")


def verify_json(result: Audit, strict: bool) -> dict[str, Any]:
    """The audit as ``mailqueue verify --json`` prints it."""
    return result.as_dict() | {"ok": result.passed(strict), "strict": strict}


def verify_view(result: Audit, strict: bool) -> dict[str, Any]:
    """:func:`verify_json` with the verdict as ``passed`` and the equation as text (``ok``
    there is the verdict too, as the command prints it)."""
    return verify_json(result, strict) | {"passed": result.passed(strict),
                                          "equation": result.equation()}

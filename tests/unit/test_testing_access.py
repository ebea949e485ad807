"""What the harness makes of Dovecot's replies to a login (no server needed)."""

from __future__ import annotations

import imaplib
import poplib

import pytest

from mailqueue.access import Closed
from mailqueue.control.windows import Inbound, Window
from mailqueue.testing import MailboxAccessError, MailboxAuthFailed, MailboxClosed
from mailqueue.testing.access import reason_kind, refusal, reply_text

WINDOW = Window(name="upgrade", stores=("basic",), start=1_800_000_000.0,
                end=1_800_010_800.0, inbound=Inbound.QUEUE)
IN_WINDOW = Closed(store="basic", window=WINDOW)
NODE_DOWN = Closed(store="basic", node="basic-2")


@pytest.mark.parametrize("closed", [IN_WINDOW, NODE_DOWN])
def test_each_kind_is_told_by_its_reason(closed: Closed) -> None:
    """The kind read back from the text is the decision's own, for both kinds."""
    assert reason_kind(closed.reason()) == closed.kind


def test_other_refusals_are_of_no_known_kind() -> None:
    assert reason_kind("No mailbox here for x@example.com") == "refused"


@pytest.mark.parametrize("protocol,error", [
    ("imap", imaplib.IMAP4.error(b"[ALERT] " + IN_WINDOW.reason().encode())),
    ("pop3", poplib.error_proto(b"-ERR [AUTH] " + IN_WINDOW.reason().encode())),
])
def test_a_window_refusal(protocol: str, error: Exception) -> None:
    exc = refusal(protocol, "Alice@basic.example", "basic", reply_text(error), IN_WINDOW)
    assert isinstance(exc, MailboxClosed)
    assert str(exc) == exc.reason == IN_WINDOW.reason()
    assert "(window upgrade) until 2027-01-15T11:00:00+00:00" in exc.reason
    assert (exc.kind, exc.store, exc.window, exc.node) == ("maintenance", "basic", WINDOW, None)
    assert (exc.address, exc.protocol) == ("Alice@basic.example", protocol)
    assert exc.reply.endswith(IN_WINDOW.reason()) and exc.reply.startswith("[")


def test_a_node_refusal_names_the_node() -> None:
    reply = reply_text(imaplib.IMAP4.error(b"[ALERT] " + NODE_DOWN.reason().encode()))
    exc = refusal("imap", "bob@basic.example", "basic", reply, NODE_DOWN)
    assert isinstance(exc, MailboxClosed)
    assert (exc.kind, exc.node, exc.window) == ("node-down", "basic-2", None)


def test_the_text_wins_over_a_decision_that_changed_since() -> None:
    """A window ended between the refusal and the look at the control plane: the kind is
    what Dovecot said, and no stale detail is attached."""
    reply = "[ALERT] " + NODE_DOWN.reason()
    exc = refusal("imap", "bob@basic.example", "basic", reply, IN_WINDOW)
    assert isinstance(exc, MailboxClosed)
    assert (exc.kind, exc.window, exc.node) == ("node-down", None, None)


@pytest.mark.parametrize("protocol,error", [
    ("imap", imaplib.IMAP4.error(b"[AUTHENTICATIONFAILED] Authentication failed.")),
    ("pop3", poplib.error_proto(b"-ERR [AUTH] Authentication failed.")),
])
def test_a_wrong_password(protocol: str, error: Exception) -> None:
    exc = refusal(protocol, "alice@basic.example", "basic", reply_text(error), IN_WINDOW)
    assert type(exc) is MailboxAuthFailed
    assert str(exc) == f"{protocol.upper()} login as alice@basic.example: " \
                       "Authentication failed."


@pytest.mark.parametrize("protocol,error", [
    ("imap", imaplib.IMAP4.error(b"[UNAVAILABLE] Temporary authentication failure.")),
    ("pop3", poplib.error_proto(b"-ERR [SYS/TEMP] Temporary authentication failure.")),
])
def test_anything_else_is_a_plain_access_error(protocol: str, error: Exception) -> None:
    exc = refusal(protocol, "alice@basic.example", "basic", reply_text(error))
    assert type(exc) is MailboxAccessError
    assert "Temporary authentication failure." in str(exc)

"""The pytest plugin, used from the outside as a user would: real pytest runs via pytester.

Each run is a subprocess with mailqueue installed and nothing in its conftest, so the
fixtures come from the ``pytest11`` entry point alone.
"""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

INI = """[pytest]
filterwarnings = error
addopts = --strict-markers -p no:cacheprovider
asyncio_default_fixture_loop_scope = function
{extra}
"""


def docs_example() -> str:
    """The example test file of the docs' "Testing your own system" page."""
    page = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    match = re.search(r"```python\n(# test_mail_upgrade\.py\n.*?)```", page, re.S)
    assert match, "docs/testing.md: the example test file is gone"
    return match.group(1)


@pytest.fixture(scope="module", autouse=True)
def _warm_imports(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Import what a running mailqueue imports lazily, before any in-process run.

    pytester restores ``sys.modules`` after an in-process run, dropping modules first
    imported inside it; a second run would then import a second copy next to objects that
    still use the first (SQLAlchemy fails on that). Importing them here keeps one copy.
    """
    from mailqueue.testing import Mailqueue, MailqueueOptions

    with Mailqueue(MailqueueOptions().build(tmp_path_factory.mktemp("warm"))) as mq:
        with smtplib.SMTP(mq.host, mq.port) as smtp:
            smtp.sendmail("a@src.test", ["x@example.com"], "Subject: w\r\n\r\nw\r\n")
        mq.drained()
        mq.ledger().assert_no_loss()
        mq.mailbox("x@example.com").messages()


def run(pytester: pytest.Pytester, extra: str = "", *args: str,
        subprocess: bool = False) -> pytest.RunResult:
    """Run pytest on the files made; in a subprocess, exactly as a user's run would be."""
    if subprocess:
        pytester.makeini(INI.format(extra=extra))
        return pytester.runpytest_subprocess(*args, timeout=120)
    # In this process mailqueue is imported already, so pytest cannot rewrite its asserts.
    pytester.makeini(INI.format(extra=extra).replace("filterwarnings = error", (
        "filterwarnings =\n    error\n    ignore:Module already imported:"
        "pytest.PytestAssertRewriteWarning")))
    return pytester.runpytest_inprocess(*args)


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_docs_example_passes(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_mail_upgrade=docs_example())
    result = run(pytester, f"asyncio_mode = {mode}", subprocess=mode == "strict")
    result.assert_outcomes(passed=2)


FAILING = '''
import shutil
import smtplib

import aiosmtplib
import pytest


def send(mq, to, n, mid=None):
    body = f"Subject: m{n}\\r\\nMessage-ID: {mid or f'<m{n}@test>'}\\r\\n\\r\\nbody {n}\\r\\n"
    with smtplib.SMTP(mq.host, mq.port) as smtp:
        smtp.sendmail("a@src.test", [to], body)


def through_window(mq, count=3):
    mq.start_window()
    for n in range(count):
        send(mq, "bob@example.com", n)
    mq.end_window()
    mq.drained()
    return sorted((mq.maildir_root() / "example.com" / "bob" / "new").iterdir())


def test_deleted_file_is_missing(mailqueue_sync):
    files = through_window(mailqueue_sync)
    mailqueue_sync.ledger().assert_no_loss()
    victim = next(f for f in files if b"<m1@test>" in f.read_bytes())
    victim.unlink()
    mailqueue_sync.ledger().assert_no_loss()


def test_copied_file_is_a_duplicate(mailqueue_sync):
    files = through_window(mailqueue_sync)
    shutil.copy(files[0], files[0].with_name("copy-of-" + files[0].name))
    mailqueue_sync.ledger().assert_no_loss()
    mailqueue_sync.ledger().assert_no_duplicates()


def test_edited_file_is_corrupted(mailqueue_sync):
    files = through_window(mailqueue_sync)
    files[2].write_bytes(files[2].read_bytes() + b"tampered\\n")
    mailqueue_sync.ledger().assert_no_loss()


def test_same_message_sent_twice(mailqueue_sync):
    send(mailqueue_sync, "bob@example.com", 7, "<once@test>")
    send(mailqueue_sync, "bob@example.com", 7, "<once@test>")
    mailqueue_sync.drained()
    mailqueue_sync.ledger().assert_no_loss()
    mailqueue_sync.ledger().assert_no_duplicates()


def test_window_never_ended(mailqueue_sync):
    mailqueue_sync.start_window()
    send(mailqueue_sync, "bob@example.com", 9)
    mailqueue_sync.ledger().assert_no_loss()


@pytest.mark.asyncio
async def test_async_not_drained(mailqueue):
    await mailqueue.start_window(name="upgrade")
    await aiosmtplib.send("Subject: x\\r\\nMessage-ID: <held@test>\\r\\n\\r\\nx\\r\\n",
                          sender="a@src.test", recipients=["bob@example.com"],
                          hostname=mailqueue.host, port=mailqueue.port)
    await mailqueue.drained(timeout=0.3)
'''


def test_failures_name_the_messages(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_failing=FAILING)
    result = run(pytester, "asyncio_mode = strict")
    result.assert_outcomes(failed=6)
    out = result.stdout.str()
    qid = r"[0-9A-Z]{14}"
    assert re.search(rf"MISSING \(1\):\n[E ]+{qid} <m1@test> -> bob@example.com: marked "
                     r"delivered; no file in the mailbox holds it", out), out
    assert re.search(rf"DUPLICATED \(1\):\n[E ]+{qid} <m\d@test> -> bob@example.com: 2 copies "
                     r"in the mailbox\n[E ]+\S+/new/\S+\n[E ]+\S+/new/copy-of-", out), out
    assert re.search(rf"CORRUPTED \(1\):\n[E ]+{qid} <m\d@test> -> bob@example.com: content "
                     r"differs from what was accepted", out), out
    assert re.search(r"sent twice: the same Message-ID was accepted as 2 messages for "
                     rf"bob@example.com\n[E ]+<once@test>: accepted as 2 messages \({qid}, "
                     rf"{qid}\)", out), out
    assert re.search(rf"NOT DELIVERED \(1\):\n[E ]+{qid} <m9@test> -> bob@example.com: still "
                     r"queued\n[E ]+\(end the window, advance\(\) the clock or await drained\(\) "
                     r"first\)", out), out
    assert re.search(rf"queue not drained after 0.3s\n.*{qid} <held@test> -> bob@example.com: "
                     r"held by active window 'upgrade'", out), out
    # A first assert_no_loss in the same tests passed: the ledger was clean before tampering.
    assert out.count("accepted 3 = delivered 3 + bounced 0 + deleted 0 + still queued 0") >= 3


OPTIONS = '''
import smtplib
from datetime import timedelta

import aiosmtplib
import pytest

pytestmark = pytest.mark.mailqueue(domains=["corp.example"], max_recipients=3)


def refused(mq, to, body="Subject: x\\r\\n\\r\\nx\\r\\n"):
    with smtplib.SMTP(mq.host, mq.port) as smtp:
        try:
            smtp.sendmail("a@src.test", [to], body)
        except smtplib.SMTPRecipientsRefused as exc:
            return exc.recipients[to][0]
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code
        except smtplib.SMTPSenderRefused as exc:
            return exc.smtp_code
    return 250


def test_module_marker(mailqueue_sync):
    assert refused(mailqueue_sync, "ann@corp.example") == 250
    assert refused(mailqueue_sync, "ann@example.com") == 550
    assert mailqueue_sync.config.smtp.max_recipients == 3


@pytest.mark.mailqueue(stores={"a": ["a.example"], "b": ["b.example"]},
                       mailboxes={"b": ["bob"]}, inbound="tempfail")
def test_closest_marker_wins(mailqueue_sync):
    assert refused(mailqueue_sync, "eve@b.example") == 550
    mailqueue_sync.start_window(stores="a")
    assert refused(mailqueue_sync, "ann@a.example") == 451
    assert refused(mailqueue_sync, "bob@b.example") == 250
    assert mailqueue_sync.config.smtp.max_recipients == 3


@pytest.mark.mailqueue(max_message_size="1KiB")
def test_size_limit(mailqueue_sync):
    assert refused(mailqueue_sync, "ann@corp.example", "x" * 4096 + "\\r\\n") == 552


def test_factory_instances_are_separate(mailqueue_sync_factory):
    one = mailqueue_sync_factory()
    two = mailqueue_sync_factory(domains=["two.example"], inbound="reject")
    assert one.port != two.port
    two.start_window()
    assert refused(two, "x@two.example") == 554
    assert refused(one, "x@corp.example") == 250
    one.drained()
    assert len(one.ledger()) == 1 and len(two.ledger()) == 0


@pytest.mark.mailqueue(config={"queue": {"max_lifetime": "1h"}})
def test_advance_and_bounce(mailqueue_sync):
    mq = mailqueue_sync
    mq.start_window(duration=timedelta(hours=2))
    mq.extend_window(timedelta(hours=1))
    assert refused(mq, "ann@corp.example") == 250
    mq.advance(timedelta(hours=3, minutes=30))
    mq.drained()  # the window time does not age the mail
    mq.ledger().assert_no_loss()
    assert mq.mailbox("ann@corp.example").messages()[0]["Delivered-To"] == "ann@corp.example"


@pytest.mark.asyncio
async def test_async_factory(mailqueue_factory):
    mq = await mailqueue_factory(stores={"x": ["x.example"]})
    await aiosmtplib.send("Subject: a\\r\\n\\r\\nb\\r\\n", sender="a@src.test",
                          recipients=["y@x.example"], hostname=mq.host, port=mq.port)
    await mq.drained()
    assert [m["Subject"] for m in await mq.mailbox("y@x.example").messages()] == ["a"]
    (await mq.ledger()).assert_no_loss()


@pytest.mark.mailqueue(colour="blue")
def test_unknown_option(mailqueue_sync):
    pass
'''


def test_options_markers_and_factories(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_options=OPTIONS)
    result = run(pytester, "asyncio_mode = strict")
    result.assert_outcomes(passed=6, errors=1)
    result.stdout.fnmatch_lines(["*unknown mailqueue option(s) colour (known: *"])


WITHOUT_ASYNCIO = '''
import smtplib


def test_sync_needs_nothing(mailqueue_sync):
    with smtplib.SMTP(mailqueue_sync.host, mailqueue_sync.port) as smtp:
        smtp.sendmail("a@src.test", ["x@example.com"], "Subject: s\\r\\n\\r\\nb\\r\\n")
    mailqueue_sync.drained()
    mailqueue_sync.ledger().assert_no_loss()


def test_async_fixture_explains(mailqueue):
    pass
'''


def test_plugin_loads_without_pytest_asyncio(pytester: pytest.Pytester) -> None:
    """pytest-asyncio missing: sync use works, the async fixture says what to install."""
    shadow = pytester.mkdir("shadow")
    (shadow / "pytest_asyncio.py").write_text("raise ImportError('not installed')\n")
    pytester.makepyfile(test_plain=WITHOUT_ASYNCIO)
    pytester.makeini(INI.format(extra="").replace(
        "asyncio_default_fixture_loop_scope = function", ""))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(shadow))
        result = pytester.runpytest_subprocess("-p", "no:asyncio", timeout=120)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the async `mailqueue` fixture needs pytest-asyncio*"])


WIDE_FIXTURE_LOOP = '''
import aiosmtplib
import pytest


@pytest.mark.asyncio
async def test_serves_in_the_test_loop(mailqueue):
    await aiosmtplib.send("Subject: s\\r\\n\\r\\nb\\r\\n", sender="a@src.test",
                          recipients=["x@example.com"], hostname=mailqueue.host,
                          port=mailqueue.port, timeout=10)
    await mailqueue.drained()
    (await mailqueue.ledger()).assert_no_loss()
'''


def test_wider_default_fixture_loop_scope(pytester: pytest.Pytester) -> None:
    """A project whose own async fixtures share a session loop still gets a working app."""
    pytester.makepyfile(test_wide=WIDE_FIXTURE_LOOP)
    result = run(pytester, "asyncio_mode = strict", "-o",
                 "asyncio_default_fixture_loop_scope=session")
    result.assert_outcomes(passed=1)


NODES = '''
import smtplib
import time
from datetime import timedelta

import pytest


def deferred(entries):
    return [r.last_error for e in entries for r in e.recipients if r.last_error]


@pytest.mark.mailqueue(nodes={"mail": 3})
def test_sync_node_down_then_up(mailqueue_sync):
    mq = mailqueue_sync
    node = mq.node_of("alice@example.com")
    assert mq.node_down("mail", node).mode == "down"
    with smtplib.SMTP(mq.host, mq.port) as smtp:
        smtp.sendmail("a@src.test", ["alice@example.com"], "Subject: n\\r\\n\\r\\nn\\r\\n")
    deadline = time.monotonic() + 10
    while not deferred(mq.ledger().entries):
        assert time.monotonic() < deadline, "no delivery was attempted"
        time.sleep(0.05)
    assert "is down" in deferred(mq.ledger().entries)[0]
    assert mq.mailbox("alice@example.com").messages() == []
    mq.node_up("mail", node)
    mq.advance(timedelta(minutes=2))
    mq.drained()
    assert len(mq.mailbox("alice@example.com").messages()) == 1
    mq.ledger().assert_no_loss()


@pytest.mark.mailqueue(nodes={"mail": 2})
async def test_async_node_down_then_up(mailqueue):
    import asyncio
    import aiosmtplib

    node = mailqueue.node_of("bob@example.com")
    await mailqueue.node_down("mail", node)
    await aiosmtplib.send("Subject: n\\r\\n\\r\\nn\\r\\n", sender="a@src.test",
                          recipients=["bob@example.com"], hostname=mailqueue.host,
                          port=mailqueue.port)
    while not deferred((await mailqueue.ledger()).entries):
        await asyncio.sleep(0.05)
    await mailqueue.node_up("mail", node)
    mailqueue.advance(timedelta(minutes=2))
    await mailqueue.drained()
    assert len(await mailqueue.mailbox("bob@example.com").messages()) == 1


def test_store_of_one_node(mailqueue_sync):
    with pytest.raises(ValueError, match=r"no node 'mail-2' \\(mail has one node: mail-1\\)"):
        mailqueue_sync.node_down("mail", 2)
    assert mailqueue_sync.node_down("mail", 1).mode == "down"
'''


def test_node_down_and_up(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_nodes=NODES)
    result = run(pytester, "asyncio_mode = auto")
    result.assert_outcomes(passed=3)

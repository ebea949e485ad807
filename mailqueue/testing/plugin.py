"""The pytest plugin (entry point ``pytest11``: installing mailqueue is enough).

Fixtures:

- ``mailqueue`` — an :class:`~mailqueue.testing.AsyncMailqueue` running in the test's
  event loop (needs pytest-asyncio; in its strict mode mark the test ``@pytest.mark.asyncio``);
- ``mailqueue_sync`` — a :class:`~mailqueue.testing.Mailqueue` for plain tests (the app runs
  on its own loop in a thread; no pytest-asyncio needed);
- ``mailqueue_factory`` / ``mailqueue_sync_factory`` — build several, each with options;
- ``mailqueue_options`` — the :class:`~mailqueue.testing.MailqueueOptions` from the
  ``@pytest.mark.mailqueue(...)`` markers (module, class and function; closest wins);
  override it to configure a whole directory.

Every instance is stopped at teardown under a timeout, whether the test passed or not.

The queue file and Maildirs of each instance are under the test's ``tmp_path``; when the
tests run as root, the Maildirs are instead in a directory of the system's temporary
directory (removed at teardown) and belong to Dovecot's mail user, so that ``imap()`` can
serve them: Dovecot reads no mail as root, and no other user may enter ``tmp_path``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mailqueue.errors import ConfigError
from mailqueue.testing.options import MailqueueOptions

if TYPE_CHECKING:
    # Imported when a fixture is used, not when pytest loads the plugin: projects that
    # have mailqueue installed but do not use it in a run pay nothing for the server code.
    from mailqueue.config import Config
    from mailqueue.testing.harness import AsyncMailqueue
    from mailqueue.testing.threaded import Mailqueue

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - exercised only where pytest-asyncio is absent
    pytest_asyncio = None  # type: ignore[assignment]

MARKER = ("mailqueue(stores=None, domains=('example.com',), mailboxes=None, inbound='queue', "
          "max_message_size='10MiB', max_recipients=100, max_messages=1000000, nodes=None, "
          "passwords=None, config=None): "
          "configure the mailqueue fixtures of this test")

AsyncFactory = Callable[..., Awaitable["AsyncMailqueue"]]
SyncFactory = Callable[..., "Mailqueue"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


@pytest.fixture
def mailqueue_options(request: pytest.FixtureRequest) -> MailqueueOptions:
    """Options from the ``mailqueue`` markers, closest last (so it wins)."""
    layers = [m.kwargs for m in reversed(list(request.node.iter_markers("mailqueue")))]
    for marker in request.node.iter_markers("mailqueue"):
        if marker.args:
            pytest.fail("@pytest.mark.mailqueue takes keyword arguments only, e.g. "
                        "@pytest.mark.mailqueue(domains=['example.com'])", pytrace=False)
    try:
        return MailqueueOptions.merged(layers)
    except TypeError as exc:
        pytest.fail(f"@pytest.mark.mailqueue: {exc}", pytrace=False)


class _Dirs:
    """A fresh directory per instance under the test's tmp_path (and, as root, one for its
    Maildirs that Dovecot's mail user can reach; see the module)."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._count = itertools.count(1)
        self._outside: list[Path] = []

    def next(self) -> Path:
        n = next(self._count)
        path = self._base / ("mailqueue" if n == 1 else f"mailqueue-{n}")
        path.mkdir()
        return path

    def maildirs(self) -> tuple[Path | None, str | None]:
        """Where the next instance's Maildirs go and their owner: (None, None) for the
        defaults, under its directory and the user running the tests."""
        if os.geteuid() != 0:
            return None, None
        from mailqueue.testing.dovecot import mail_owner

        path = Path(tempfile.mkdtemp(prefix="mailqueue-maildirs-"))
        self._outside.append(path)
        path.chmod(0o711)  # the mail user passes through, and lists nothing
        return path, mail_owner()

    def remove(self) -> None:
        """Remove the directories made outside tmp_path (the instances have stopped)."""
        for path in self._outside:
            shutil.rmtree(path, ignore_errors=True)


def _options(base: MailqueueOptions, overrides: dict[str, Any]) -> MailqueueOptions:
    layer = {k: getattr(base, k) for k in base.__dataclass_fields__}
    try:
        return MailqueueOptions.merged([layer, overrides])
    except TypeError as exc:
        pytest.fail(f"mailqueue options: {exc}", pytrace=False)


def _config(options: MailqueueOptions, dirs: _Dirs) -> Config:
    root = dirs.next()
    maildirs, owner = dirs.maildirs()
    try:
        return options.build(root, maildirs=maildirs, owner=owner)
    except ConfigError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def mailqueue_sync_factory(mailqueue_options: MailqueueOptions,
                           tmp_path: Path) -> Iterator[SyncFactory]:
    """``mailqueue_sync_factory(**options)`` starts another threaded mailqueue."""
    dirs = _Dirs(tmp_path)
    started: list[Mailqueue] = []

    def make(**overrides: Any) -> Mailqueue:
        from mailqueue.testing.threaded import Mailqueue

        options = _options(mailqueue_options, overrides)
        instance = Mailqueue(_config(options, dirs), inbound=options.inbound,
                             passwords=options.passwords)
        instance.start()
        started.append(instance)
        return instance

    try:
        yield make
    finally:
        try:
            _stop_all_sync(started)
        finally:
            dirs.remove()


def _stop_all_sync(started: list[Mailqueue]) -> None:
    errors = []
    for instance in reversed(started):
        try:
            instance.stop()
        except Exception as exc:  # stop the others, then report
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def mailqueue_sync(mailqueue_sync_factory: SyncFactory) -> Mailqueue:
    """A complete mailqueue for a synchronous test (runs in a background thread)."""
    return mailqueue_sync_factory()


async def _async_factory(options: MailqueueOptions,
                         tmp_path: Path) -> AsyncIterator[AsyncFactory]:
    dirs = _Dirs(tmp_path)
    started: list[AsyncMailqueue] = []

    async def make(**overrides: Any) -> AsyncMailqueue:
        from mailqueue.testing.harness import AsyncMailqueue

        chosen = _options(options, overrides)
        instance = AsyncMailqueue(_config(chosen, dirs), inbound=chosen.inbound,
                                  passwords=chosen.passwords)
        await instance.start()
        started.append(instance)
        return instance

    try:
        yield make
    finally:
        errors = []
        for instance in reversed(started):
            try:
                await instance.stop()
            except Exception as exc:  # stop the others, then report
                errors.append(exc)
        dirs.remove()
        if errors:
            raise errors[0]


if pytest_asyncio is not None:
    # loop_scope="function", whatever asyncio_default_fixture_loop_scope says: the app
    # must run in the loop the test runs in (function-scoped by default), or it would sit
    # idle on another loop while the test talks to it.
    @pytest_asyncio.fixture(loop_scope="function")
    async def mailqueue_factory(mailqueue_options: MailqueueOptions,
                                tmp_path: Path) -> AsyncIterator[AsyncFactory]:
        """``await mailqueue_factory(**options)`` starts another mailqueue in this loop."""
        async for factory in _async_factory(mailqueue_options, tmp_path):
            yield factory

    @pytest_asyncio.fixture(loop_scope="function")
    async def mailqueue(mailqueue_factory: AsyncFactory) -> AsyncMailqueue:
        """A complete mailqueue in the test's event loop, with a manual clock."""
        return await mailqueue_factory()
else:  # pragma: no cover
    _NEEDS = ("the async `{}` fixture needs pytest-asyncio (pip install pytest-asyncio); "
              "for a synchronous test use `mailqueue_sync`")

    @pytest.fixture
    def mailqueue_factory() -> None:
        pytest.fail(_NEEDS.format("mailqueue_factory"), pytrace=False)

    @pytest.fixture
    def mailqueue() -> None:
        pytest.fail(_NEEDS.format("mailqueue"), pytrace=False)

"""A queue file that cannot be looked at is not a lost one.

After each commit the server asks whether the queue's path still names the file it opened.
When the path cannot be looked at (no search permission on its directory, a stale NFS
handle), nothing says the file is gone: the commit is in the queue's file, so the batch is
answered 250. A 451 would have the sender send the message again, and it would be delivered
twice. The server says once that it cannot check, and nothing is reported lost.

The server runs without the right to look past permissions (when the tests run as root,
``setpriv`` drops it from the server's capabilities), and the test takes the search
permission of the queue's directory away.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailqueue.testing.drills import Server
from tests.helpers import wait_for
from tests.integration.test_queue_file_lost import WRITERS, Served, _delivered, _ready

# Root looks up names in any directory; without these two capabilities it is held to the
# permissions as any owner is.
_AS_ANY_OWNER = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


class OwnerServer(Server):
    """``mailqueue serve`` held to file permissions, even when the tests run as root."""

    def start(self, faults: str = "") -> None:
        prefix = _AS_ANY_OWNER if os.geteuid() == 0 else []
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILQUEUE_")}
        with open(self.config.parent / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "mailqueue", "serve", "-c", str(self.config)],
                stdout=subprocess.DEVNULL, stderr=log, env=env)


@pytest.mark.parametrize("writer", WRITERS)
async def test_a_commit_whose_file_cannot_be_checked_is_acknowledged(
        tmp_path: Path, writer: str) -> None:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("as root, this needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    served = Served(tmp_path, writer)
    served.server = OwnerServer(served.server.config, served.port)
    served.server.start()
    try:
        await served.server.listening()
        await wait_for(lambda: _ready(served), timeout=20)
        assert (await served.send("before")).startswith("250 2.0.0")
        var = served.queue.parent
        os.chmod(var, 0o600)  # its owner may no longer look up names in it
        try:
            replies = [await served.send(f"during{i}") for i in range(3)]
            assert all(r.startswith("250 2.0.0") for r in replies), replies
        finally:
            os.chmod(var, 0o755)
        await wait_for(lambda: len(_delivered(tmp_path)) >= 4, timeout=20)
        assert await served.server.terminate() == 0
    finally:
        served.server.cleanup()
    assert sorted(_delivered(tmp_path)) == ["before", "during0", "during1", "during2"]
    events = [e["event"] for e in served.events()]
    assert "queue_file_lost" not in events
    assert events.count("queue_file_unchecked") == 1, events

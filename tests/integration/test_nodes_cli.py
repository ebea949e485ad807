"""A node flipped from another process is seen by a running server's control plane."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mailqueue.clock import ManualClock
from mailqueue.control.nodes import NodeMode
from mailqueue.control.plane import ControlPlane
from mailqueue.queue.sqlstore import SqlQueueStore
from tests.helpers import make_config


def write_config(tmp_path: Path) -> Path:
    config = make_config(tmp_path)
    path = tmp_path / "mq.toml"
    stores = "\n".join(f'[[stores]]\nname = "{s.name}"\npath = "{s.path}"\n'
                       f'domains = {list(s.domains)!r}\n'.replace("'", '"')
                       for s in config.stores)
    path.write_text(f'[queue]\nurl = "{config.queue.url}"\n\n{stores}')
    return path


def mailqueue(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailqueue", *args], capture_output=True,
                          text=True, timeout=60, check=False)


async def test_node_set_from_the_cli_reaches_the_control_plane(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    assert mailqueue("db", "upgrade", "-c", str(path)).returncode == 0  # the server's queue
    result = mailqueue("node", "set", "basic-1", "flaky", "--failure-rate", "0.25",
                       "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "set basic-1 flaky failure_rate=0.25"

    store = SqlQueueStore(make_config(tmp_path).queue.url)
    await store.open()
    try:
        control = ControlPlane(store, ManualClock(0.0), ["basic", "hosted-exchange"])
        await control.refresh()
        node = control.nodes()["basic-1"]
        assert node.mode is NodeMode.FLAKY and node.failure_rate == 0.25 and node.version == 1
        await store.save_nodes([node.changed(NodeMode.UP, 1.0)])
        await control.refresh()
        assert control.nodes()["basic-1"].mode is NodeMode.UP
    finally:
        await store.close()
    listed = mailqueue("node", "list", "-c", str(path))
    assert listed.stdout.splitlines() == ["basic-1 up", "hosted-exchange-1 up"]


def test_node_set_mistakes_are_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    result = mailqueue("node", "set", "ghost-1", "down", "-c", str(path))
    assert result.returncode == 1
    assert result.stderr.strip() == ("mailqueue: error: no node 'ghost-1' (known: basic-1, "
                                     "hosted-exchange-1)")
    result = mailqueue("node", "set", "basic-1", "slow", "-c", str(path))
    assert "a slow node needs --latency" in result.stderr

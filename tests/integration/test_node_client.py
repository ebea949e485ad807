"""The integration test a team without Python would write: ``tests/node/no_loss.test.mjs``
(Node.js, its standard library only) against a real ``mailqueue serve``, through the HTTP
API and SMTP."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.served import free_port, start, wait_listening, write_config

NODE = shutil.which("node")
TESTS = Path(__file__).parent.parent / "node"


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed (node not on PATH)")
async def test_a_node_test_proves_no_loss_through_the_api(tmp_path: Path) -> None:
    smtp, admin, token = free_port(), free_port(), "node-test-token"
    config = write_config(tmp_path, smtp, extra=f"""
[admin]
port = {admin}
token = "{token}"
""")
    server = start(config)
    try:
        await wait_listening(smtp, server)
        await wait_listening(admin, server)
        assert NODE is not None
        env = {**os.environ, "MAILQUEUE_API": f"http://127.0.0.1:{admin}",
               "MAILQUEUE_SMTP_PORT": str(smtp), "MAILQUEUE_TOKEN": token,
               "MAILQUEUE_RCPT": "alice@basic.example"}
        result = await asyncio.to_thread(
            subprocess.run, [NODE, "--test", str(TESTS)], env=env, capture_output=True,
            text=True, timeout=90, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "# pass 2" in result.stdout and "# fail 0" in result.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)

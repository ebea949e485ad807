"""Rehearsals whose output several tests read: each scenario runs once per test run, in a
directory all pytest-xdist workers share, and every test that asks for it reads the same
report (``rehearsals`` fixture, tests/conftest.py).

A test that asks for a rehearsal another worker is running waits for it (a file lock), so
the run happens once whatever the order of the tests. The tests only read what it wrote:
one that changes its output must run a rehearsal of its own.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Rehearsed:
    """A finished ``mailqueue rehearse``: its exit code, its output, and its ``--out``."""

    returncode: int
    stdout: str
    stderr: str
    out: Path

    @property
    def directory(self) -> Path:
        """Where the scenario file (``scenario.toml``) and ``out/`` are."""
        return self.out.parent


class Rehearsals:
    """The rehearsals of one test run, under ``root`` (shared by its workers)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def run(self, text: str, *, workdir: bool = False, timeout: float = 120) -> Rehearsed:
        """``mailqueue rehearse`` of the scenario ``text`` (``--workdir`` in its directory
        if ``workdir``, else the rehearsal's own temporary one), run the first time it is
        asked for; the same result each time after."""
        key = hashlib.sha256(json.dumps([text, workdir]).encode()).hexdigest()[:16]
        directory = self.root / key
        done = directory / "result.json"
        with (self.root / f"{key}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not done.exists():
                    self._rehearse(directory, text, workdir, timeout)
                result = json.loads(done.read_text())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return Rehearsed(result["returncode"], result["stdout"], result["stderr"],
                         directory / "out")

    @staticmethod
    def _rehearse(directory: Path, text: str, workdir: bool, timeout: float) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        scenario = directory / "scenario.toml"
        scenario.write_text(text)
        argv = [sys.executable, "-m", "mailqueue", "rehearse", str(scenario),
                "--out", str(directory / "out")]
        if workdir:
            argv += ["--workdir", str(directory / "work")]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  check=False)
            result = {"returncode": done.returncode, "stdout": done.stdout,
                      "stderr": done.stderr}
        except subprocess.TimeoutExpired as exc:
            result = {"returncode": -1, "stdout": _text(exc.stdout),
                      "stderr": _text(exc.stderr) + f"\nrehearsal timed out after {timeout}s"}
        partial = directory / "result.json.part"
        partial.write_text(json.dumps(result))
        os.replace(partial, directory / "result.json")


def _text(value: str | bytes | None) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""


def shared_root(basetemp: Path) -> Path:
    """The directory the workers of this test run share: the parent of a worker's
    ``basetemp`` under pytest-xdist, else ``basetemp`` itself."""
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp

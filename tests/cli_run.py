"""Run the real ``mailqueue`` entry point in this process and read what a user would see."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mailqueue.cli import main

STORES = """
[[stores]]
name = "basic"
path = "mail/basic"
domains = ["basic.example"]

[[stores]]
name = "hosted-exchange"
path = "mail/hosted-exchange"
domains = ["exchange.example"]
"""


@dataclasses.dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


Mq = Callable[..., Result]


def cli_runner(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    """``mq("window", "list", "-c", path)``: mailqueue.cli.main with that argv. Its exit
    status, stdout and stderr; any exception other than the exit (a traceback a user would
    see) fails the test. MAILQUEUE_* variables of the test run are removed (a test sets
    its own with ``monkeypatch``)."""
    for name in list(os.environ):
        if name.startswith("MAILQUEUE_"):
            monkeypatch.delenv(name)

    def run(*argv: str | Path) -> Result:
        capsys.readouterr()
        code = 0
        try:
            main([str(arg) for arg in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def one_line_error(result: Result, *fragments: str) -> str:
    """The single ``mailqueue: error:`` line ``result`` printed (after checking that it
    failed, printed nothing else on stderr, and no traceback), holding ``fragments``."""
    assert result.code != 0, (result.out, result.err)
    lines = result.err.splitlines()
    assert "Traceback" not in result.err
    assert len(lines) == 1 and lines[0].startswith("mailqueue: error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write_config(directory: Path, text: str = "", stores: str = STORES,
                 name: str = "mq.toml") -> Path:
    """A config file in ``directory``: ``text`` then the stores."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text + stores)
    return path


def tree(root: Path) -> list[str]:
    """Every path under ``root``, relative to it (what a command may have created)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

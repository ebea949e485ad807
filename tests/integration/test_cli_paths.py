"""Paths that can never work are refused before work starts, in one line: a store path no
Maildir can be made in, a queue directory that cannot be created, rehearsal output that
cannot be written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_run import Mq, Result, cli_runner, one_line_error, tree, write_config

SCENARIO = Path(__file__).resolve().parents[2] / "config" / "scenarios" / "quickstart.toml"


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


def serve(config: Path) -> Result:
    """``mailqueue serve`` in a child process, which is expected to refuse to start."""
    done = subprocess.run([sys.executable, "-m", "mailqueue", "serve", "-c", str(config),
                           "--port", "0"], capture_output=True, text=True, timeout=60)
    return Result(done.returncode, done.stdout, done.stderr)


def store_config(tmp_path: Path, path: str) -> Path:
    return write_config(tmp_path, '[queue]\nurl = "sqlite+aiosqlite:///var/queue.db"\n',
                        stores=f'[[stores]]\nname = "basic"\npath = "{path}"\n'
                               'domains = ["basic.example"]\n')


@pytest.mark.parametrize(("path", "says"), [
    ("afile", "{tmp}/afile is a file, not a directory"),
    ("afile/mail", "{tmp}/afile is a file, so {tmp}/afile/mail cannot be a directory"),
    ("/proc/mailqueue-test", "/proc/mailqueue-test is on a proc pseudo filesystem"),
    ("/sys/mailqueue-test/mail", "/sys/mailqueue-test/mail is on a sysfs pseudo filesystem"),
])
def test_serve_refuses_a_store_path_that_can_never_hold_maildirs(tmp_path: Path, path: str,
                                                                  says: str) -> None:
    (tmp_path / "afile").write_text("a file\n")
    config = store_config(tmp_path, path)
    line = one_line_error(serve(config), "store 'basic' (stores[0].path): ",
                          says.format(tmp=tmp_path))
    assert "point it at a directory" in line
    assert tree(tmp_path) == ["afile", "mq.toml"]  # no queue, no Maildir


def test_serve_starts_for_a_store_that_is_only_missing(tmp_path: Path) -> None:
    """A store directory that does not exist yet is made (and not refused)."""
    config = store_config(tmp_path, "mail/basic")
    server = subprocess.Popen([sys.executable, "-m", "mailqueue", "serve", "-c", str(config),
                               "--port", "0", "--log-json"], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if "server_started" in line:
                break
        assert (tmp_path / "mail" / "basic").is_dir()
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.mark.parametrize("command", [["serve"], ["db", "upgrade"]], ids=" ".join)
def test_a_queue_directory_that_cannot_be_made_is_one_line(tmp_path: Path, mq: Mq,
                                                           command: list[str]) -> None:
    (tmp_path / "afile").write_text("a file\n")
    config = write_config(tmp_path, '[queue]\nurl = "sqlite+aiosqlite:///afile/queue.db"\n')
    result = serve(config) if command == ["serve"] else mq(*command, "-c", config)
    one_line_error(result, f"cannot create the directory {tmp_path / 'afile'} for the queue "
                   "database: a file is in the way (check [queue] url)")


@pytest.mark.parametrize("command", [["stats"], ["window", "list"]], ids=" ".join)
def test_a_queue_under_a_file_is_missing_for_other_commands(tmp_path: Path, mq: Mq,
                                                            command: list[str]) -> None:
    (tmp_path / "afile").write_text("a file\n")
    config = write_config(tmp_path, '[queue]\nurl = "sqlite+aiosqlite:///afile/queue.db"\n')
    one_line_error(mq(*command, "-c", config),
                   f"no queue database at {tmp_path / 'afile' / 'queue.db'}")


@pytest.mark.parametrize(("options", "says"), [
    (["--out", "{tmp}/afile/report"],
     "--out: {tmp}/afile is a file, so {tmp}/afile/report cannot be a directory"),
    (["--out", "{tmp}/afile"], "--out: {tmp}/afile is a file, not a directory"),
    (["--out", "{tmp}/report", "--workdir", "{tmp}/afile/work"],
     "--workdir: {tmp}/afile is a file, so"),
    (["--out", "{tmp}/report", "--workdir", "/proc/mailqueue-test"],
     "--workdir: /proc/mailqueue-test is on a proc pseudo filesystem"),
])
def test_rehearse_checks_its_directories_before_it_runs(tmp_path: Path, mq: Mq,
                                                        options: list[str], says: str) -> None:
    (tmp_path / "afile").write_text("a file\n")
    argv = [option.format(tmp=tmp_path) for option in options]
    result = mq("rehearse", SCENARIO, *argv)
    one_line_error(result, says.format(tmp=tmp_path))  # and no "rehearsing ..." line
    assert tree(tmp_path) == ["afile"]


def test_rehearse_relative_directories_are_relative_to_the_current_one(
        tmp_path: Path, mq: Mq, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file\n")
    one_line_error(mq("rehearse", SCENARIO, "--out", "afile/out"),
                   f"--out: {tmp_path / 'afile'} is a file")

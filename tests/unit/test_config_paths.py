"""Relative paths in a config file are relative to the file's directory, so every command
run with the same -c sees the same queue wherever it runs; a path from the environment is
relative to the current directory, as a path typed on a command line is."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailqueue.config import load_config
from tests.cli_run import Mq, cli_runner, write_config

ROOT = Path(__file__).resolve().parents[2]
RELATIVE = '[queue]\nurl = "sqlite+aiosqlite:///var/queue.db"\n'


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


def test_relative_paths_in_a_file_are_relative_to_it(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path / "etc", RELATIVE)
    monkeypatch.chdir(tmp_path)
    loaded = load_config(config, environ={})
    assert loaded.queue.url == f"sqlite+aiosqlite:///{tmp_path / 'etc' / 'var' / 'queue.db'}"
    assert [s.path for s in loaded.stores] == [tmp_path / "etc" / "mail" / "basic",
                                               tmp_path / "etc" / "mail" / "hosted-exchange"]
    # the default queue URL, when the file gives none, is beside the file too
    bare = load_config(write_config(tmp_path / "other", ""), environ={})
    assert bare.queue.url == f"sqlite+aiosqlite:///{tmp_path / 'other' / 'var' / 'queue.db'}"


def test_the_default_config_keeps_its_queue_in_the_repository_var(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load_config(ROOT / "config" / "default.toml", environ={})
    assert loaded.queue.url == f"sqlite+aiosqlite:///{ROOT / 'var' / 'queue.db'}"
    assert [s.path for s in loaded.stores] == [ROOT / "var" / "mail" / "basic",
                                               ROOT / "var" / "mail" / "hosted-exchange"]


def test_paths_from_the_environment_are_relative_to_the_current_directory(
        tmp_path: Path, mq: Mq, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path / "etc", RELATIVE)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    env = {"MAILQUEUE_QUEUE_URL": "sqlite+aiosqlite:///q.db",
           "MAILQUEUE_STORES_1_PATH": "boxes"}
    loaded = load_config(config, environ=env)
    assert loaded.queue.url == f"sqlite+aiosqlite:///{here / 'q.db'}"
    assert [s.path for s in loaded.stores] == [tmp_path / "etc" / "mail" / "basic",
                                               here / "boxes"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert mq("db", "upgrade", "-c", config).code == 0
    assert (here / "q.db").is_file() and not (tmp_path / "etc" / "var").exists()

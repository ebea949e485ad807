"""What ``serve`` picks for ``[queue] writer = "auto"`` and ``--loop auto``, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailqueue import loops, tuning
from mailqueue.config import Config, config_from_dict

STORES = [{"name": "basic", "path": "/tmp/mail", "domains": ["basic.example"]}]
SQLITE = "sqlite+aiosqlite:////tmp/q.db"
POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1/test"


def config(**queue: object) -> Config:
    return config_from_dict({"queue": {"url": SQLITE, **queue}, "stores": STORES}, "test")


def writer(cfg: Config, cpus: int = 2, run_smtp: bool = True,
           null: bool = False) -> tuning.Choice:
    return tuning.choose_writer(cfg, run_smtp=run_smtp, null=null, cpus=cpus)


def test_auto_is_the_default_and_a_process_on_two_cpus() -> None:
    assert config().queue.writer == "auto"
    choice = writer(config(), cpus=2)
    assert choice == tuning.Choice("process", "2 usable CPUs and an SQLite file queue")
    assert tuning.tuned(config(), choice).queue.writer == "process"


def test_auto_is_a_thread_on_one_cpu() -> None:
    choice = writer(config(), cpus=1)
    assert choice.value == "thread" and "one usable CPU" in choice.reason


@pytest.mark.parametrize(("cfg", "run_smtp", "null", "reason"), [
    (config(url=POSTGRES), True, False, "the queue is not an SQLite file"),
    (config(url="sqlite+aiosqlite:///:memory:"), True, False, "not an SQLite file"),
    (config(), False, False, "no SMTP front end"),
    (config(), True, True, "--null"),
])
def test_auto_is_a_thread_where_a_process_has_nothing_to_do(
        cfg: Config, run_smtp: bool, null: bool, reason: str) -> None:
    choice = writer(cfg, cpus=8, run_smtp=run_smtp, null=null)
    assert choice.value == "thread" and reason in choice.reason


@pytest.mark.parametrize("value", ["thread", "process"])
def test_a_set_writer_is_kept(value: str) -> None:
    assert writer(config(writer=value), cpus=1 if value == "process" else 8) == \
        tuning.Choice(value, "set in [queue] writer")


def test_writer_cpus_asks_for_a_process_even_on_one_cpu() -> None:
    assert writer(config(writer_cpus="0"), cpus=1) == \
        tuning.Choice("process", "[queue] writer_cpus is set")


@pytest.mark.parametrize(("available", "quota", "usable"), [
    ([0, 1], None, 2), ([3], None, 1), ([0, 1, 2, 3], 1.5, 2), ([0, 1, 2, 3], 0.5, 1),
    ([0, 1], 8.0, 2),
])
def test_usable_cpus(available: list[int], quota: float | None, usable: int) -> None:
    assert tuning.usable_cpus(available, quota) == usable


@pytest.mark.parametrize(("text", "quota"), [
    ("max 100000\n", None), ("150000 100000\n", 1.5), ("garbage\n", None),
])
def test_cpu_quota(tmp_path: Path, text: str, quota: float | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(text)
    assert tuning.cpu_quota(path) == quota
    assert tuning.cpu_quota(tmp_path / "absent") is None


def test_loop_choice_names_its_reason() -> None:
    assert tuning.choose_loop("asyncio") == tuning.Choice("asyncio", "set with --loop")
    auto = tuning.choose_loop("auto")
    assert auto.value == loops.loop_name("auto")
    assert auto.reason == ("installed" if auto.value == "uvloop" else
                           "uvloop is not installed (pip install 'mailqueue[fast]')")

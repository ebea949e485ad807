from __future__ import annotations

from pathlib import Path

import pytest

from mailqueue.config import load_config
from mailqueue.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
[[stores]]
name = "basic"
path = "mail"
domains = ["basic.example"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mq.toml"
    path.write_text(text)
    return path


def test_default_config_loads() -> None:
    config = load_config(ROOT / "config" / "default.toml", environ={})
    assert [s.name for s in config.stores] == ["basic", "hosted-exchange"]
    assert config.queue.url.startswith("sqlite+aiosqlite:///")
    assert config.queue.max_lifetime == 5 * 86400
    assert config.windows[0].timezone == "America/Chicago"


def test_minimal_config_has_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.smtp.port == 2525 and config.delivery.batch_size == 1000


def test_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    config = load_config(path, environ={"MAILQUEUE_SMTP_PORT": "2600",
                                        "MAILQUEUE_QUEUE_URL": "sqlite+aiosqlite:///x.db"})
    # a relative path from the environment is relative to the current directory
    assert config.smtp.port == 2600
    assert config.queue.url == f"sqlite+aiosqlite:///{Path.cwd() / 'x.db'}"
    config = load_config(environ={"MAILQUEUE_CONFIG": str(path)})
    assert config.stores[0].name == "basic"


@pytest.mark.parametrize(("value", "cpus"), [
    ('"0"', (0,)), ('"0,2"', (0, 2)), ('"0-3"', (0, 1, 2, 3)), ('"1, 0-1"', (0, 1)),
    ("1", (1,)), ("[2, 0]", (0, 2)), ('""', None), ('"all"', None),
])
def test_server_cpus(tmp_path: Path, value: str, cpus: tuple[int, ...] | None) -> None:
    config = load_config(write(tmp_path, f"[server]\ncpus = {value}\n" + MINIMAL), environ={})
    assert config.server.cpus == cpus
    assert load_config(write(tmp_path, MINIMAL), environ={"MAILQUEUE_SERVER_CPUS": "0"}
                       ).server.cpus == (0,)


@pytest.mark.parametrize(("text", "expected"), [
    ("[server]\ncpus = 'first'\n" + MINIMAL, "server.cpus: bad CPU list 'first'"),
    ("[server]\ncpus = '3-1'\n" + MINIMAL, "bad CPU range '3-1'"),
    ("[server]\ncpus = -1\n" + MINIMAL, "server.cpus"),
    ("[smtp]\nport = 'x'\n" + MINIMAL, "smtp.port"),
    ("[smtp]\nprot = 25\n" + MINIMAL, "smtp.prot: unknown key"),
    ("[queue]\nmax_lifetime = 'forever'\n" + MINIMAL, "not a duration"),
    ("[queue]\nurl = 'mysql://x'\n" + MINIMAL, "queue.url"),
    ("[queue]\nurl = 'sqlite+aiosqlite://var/q.db'\n" + MINIMAL, "three slashes"),
    ("[queue]\nwriter = 'proc'\n" + MINIMAL, "queue.writer: Input should be 'auto', 'thread'"),
    ("[queue]\nurl = 'postgresql+asyncpg://h/db'\nwriter = 'process'\n" + MINIMAL,
     'writer = "process" is for a queue in an SQLite file'),
    ("[queue]\nwriter = 'thread'\nwriter_cpus = '1'\n" + MINIMAL,
     'writer_cpus applies only with writer = "process" or "auto"'),
    ("[queue]\nurl = 'postgresql+asyncpg://h/db'\nwriter_cpus = '1'\n" + MINIMAL,
     "writer_cpus is for a queue in an SQLite file"),
    ("[queue]\nwriter = 'process'\nwriter_cpus = 'one'\n" + MINIMAL,
     "queue.writer_cpus: bad CPU list 'one'"),
    (MINIMAL + "[[windows]]\nname='w'\nstart='tomorrow'\nend='2019-06-28T17:00Z'\n",
     "windows[0]: start: not a time"),
    ("", "stores: required key is missing"),
    (MINIMAL + MINIMAL, "duplicate store name 'basic'"),
    (MINIMAL + "[[windows]]\nname='w'\nstart='2019-06-26 17:00'\nend='2019-06-28 17:00'\n",
     "no UTC offset"),
    (MINIMAL + "[[windows]]\nname='w'\nstart='2019-06-28T17:00Z'\nend='2019-06-26T17:00Z'\n",
     "end must be after start"),
    (MINIMAL + "[[windows]]\nname='w'\nstores=['nope']\nstart='2019-06-26T17:00Z'\n"
     "end='2019-06-28T17:00Z'\n", "unknown store 'nope'"),
    (MINIMAL + "[[windows]]\nname='w'\ntimezone='Mars/X'\nstart='2019-06-26 17:00'\n"
     "end='2019-06-28 17:00'\n", "unknown time zone"),
    ("[[stores]]\nname='b'\npath='m'\ndomains=['not a domain']\n", "is not a domain name"),
    ("this is = = not toml", "invalid TOML"),
])
def test_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message
    assert "\n" not in message


def test_missing_file_and_no_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml", environ={})
    with pytest.raises(ConfigError, match="MAILQUEUE_CONFIG"):
        load_config(environ={})


def test_bad_env_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MAILQUEUE_BOGUS_X"):
        load_config(write(tmp_path, MINIMAL), environ={"MAILQUEUE_BOGUS_X": "1"})

"""Environment overrides: every key a config file can set, typed as the file types it;
a bad override is one line naming it, through the real command line."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from mailqueue._overrides import config_keys, override_key
from mailqueue.config import Config, load_config
from tests.cli_run import Mq, cli_runner, one_line_error, write_config

WINDOW = '\n[[windows]]\nname = "w"\nstart = "2030-01-01T00:00:00Z"\nend = "2030-01-02T00:00:00Z"\n'


@pytest.fixture
def mq(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Mq:
    return cli_runner(capsys, monkeypatch)


def test_every_key_has_an_override() -> None:
    keys = config_keys(Config)
    assert ("queue", "retry", "initial_delay") in keys and ("stores", 0, "path") in keys
    for key in keys:
        name = "MAILQUEUE_" + "_".join(str(part) for part in key).upper()
        assert override_key(name, Config)[0] == key, name


@pytest.mark.parametrize(("env", "key", "value"), [
    ({"MAILQUEUE_ADMIN_TOKEN": "123456"}, ("admin", "token"), "123456"),
    ({"MAILQUEUE_SMTP_HOSTNAME": "true"}, ("smtp", "hostname"), "true"),
    ({"MAILQUEUE_SMTP_PORT": "2600"}, ("smtp", "port"), 2600),
    ({"MAILQUEUE_QUEUE_RETRY_INITIAL_DELAY": "5s"}, ("queue", "retry", "initial_delay"), 5.0),
    ({"MAILQUEUE_QUEUE_RETRY_MULTIPLIER": "1.5"}, ("queue", "retry", "multiplier"), 1.5),
    ({"MAILQUEUE_QUEUE_WINDOW_TIME_COUNTS": "true"}, ("queue", "window_time_counts"), True),
    ({"MAILQUEUE_QUEUE_MAX_BYTES": "1GiB"}, ("queue", "max_bytes"), 1024**3),
    ({"MAILQUEUE_SERVER_CPUS": "0-1"}, ("server", "cpus"), (0, 1)),
    ({"MAILQUEUE_QUEUE_WRITER": "process"}, ("queue", "writer"), "process"),
    ({"MAILQUEUE_LOGGING_LEVEL": "debug"}, ("logging", "level"), "debug"),
    ({"MAILQUEUE_STORES_1_DOMAINS": '["x.example", "Y.example"]'}, ("stores", 1, "domains"),
     ["x.example", "y.example"]),
    ({"MAILQUEUE_STORES_0_WRITERS": "4"}, ("stores", 0, "writers"), 4),
    ({"MAILQUEUE_WINDOWS_0_INBOUND": "tempfail"}, ("windows", 0, "inbound"), "tempfail"),
    ({"MAILQUEUE_WINDOWS_0_STORES": '["basic"]'}, ("windows", 0, "stores"), ["basic"]),
])
def test_overrides_are_typed_as_the_file_types_them(
        tmp_path: Path, env: dict[str, str], key: tuple[str | int, ...], value: object) -> None:
    config = load_config(write_config(tmp_path, WINDOW), environ=env)
    found: typing.Any = config
    for part in key:
        found = found[part] if isinstance(part, int) else getattr(found, part)
    assert found == value


def test_overrides_work_through_the_command_line(tmp_path: Path, mq: Mq,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path, '[queue]\nurl = "sqlite+aiosqlite:///queue.db"\n')
    assert mq("db", "upgrade", "-c", config).code == 0
    monkeypatch.setenv("MAILQUEUE_ADMIN_TOKEN", "123456")
    monkeypatch.setenv("MAILQUEUE_QUEUE_RETRY_INITIAL_DELAY", "5s")
    listed = mq("window", "list", "-c", config)
    assert listed.code == 0 and listed.err == "" and listed.out == "no windows\n"


@pytest.mark.parametrize(("env", "says"), [
    ({"MAILQUEUE_QUEUE_RETRY_INITIAL_DELAYS": "5s"},
     "MAILQUEUE_QUEUE_RETRY_INITIAL_DELAYS: unknown override (MAILQUEUE_QUEUE_RETRY_ takes "
     "INITIAL_DELAY, MULTIPLIER, MAX_DELAY, JITTER)"),
    ({"MAILQUEUE_QUEUE_RETRY": "5s"}, "MAILQUEUE_QUEUE_RETRY: unknown override "
     "(MAILQUEUE_QUEUE_ takes URL, MAX_MESSAGES"),
    ({"MAILQUEUE_BOGUS_X": "1"}, "MAILQUEUE_BOGUS_X: unknown override (MAILQUEUE_ takes "
     "SERVER_<KEY>, SMTP_<KEY>"),
    ({"MAILQUEUE_STORES_PATH": "x"}, "STORES_<N>_<KEY>"),
    ({"MAILQUEUE_STORES_2_PATH": "x"},
     "MAILQUEUE_STORES_2_PATH: {config} has 2 [[stores]] entries; an override can change a "
     "key of an entry the file has (counted from 0), not add one"),
    ({"MAILQUEUE_WINDOWS_0_NAME": "w"}, "has 0 [[windows]] entries"),
    ({"MAILQUEUE_STORES_0_NODES_X": "3"}, "MAILQUEUE_STORES_0_ takes NAME, KIND, PATH"),
    ({"MAILQUEUE_SMTP_PORT": "true"},
     "{config} + MAILQUEUE_SMTP_PORT: smtp.port: Input should be a valid integer"),
    ({"MAILQUEUE_DELIVERY_MAX_RATE": "inf"}, "delivery.max_rate: Input should be a finite"),
    ({"MAILQUEUE_QUEUE_MAX_LIFETIME": "3000000d"}, "queue.max_lifetime: duration '3000000d'"),
])
def test_bad_overrides_are_one_line(tmp_path: Path, mq: Mq, monkeypatch: pytest.MonkeyPatch,
                                    env: dict[str, str], says: str) -> None:
    config = write_config(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    one_line_error(mq("window", "list", "-c", config), says.format(config=config))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mq.toml"]

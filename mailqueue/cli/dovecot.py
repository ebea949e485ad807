"""``mailqueue dovecot``: a Dovecot that serves the stores' Maildirs over IMAP and POP3 and
asks mailqueue who may log in (:mod:`mailqueue.access.dovecot`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailqueue.cli._common import config_option, load

if TYPE_CHECKING:
    from mailqueue.config import Config


@click.group("dovecot")
def dovecot() -> None:
    """Serve the mailboxes to mail clients through Dovecot, closed during windows."""


@dovecot.command("config", short_help="Write a ready Dovecot configuration.")
@config_option
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Where dovecot.conf, its log and its sockets go. Default: dovecot/ "
                   "beside the SQLite queue file.")
@click.option("--imap-port", type=click.IntRange(0, 65535), default=10143, show_default=True,
              help="IMAP port (0: no IMAP).")
@click.option("--pop3-port", type=click.IntRange(0, 65535), default=10110, show_default=True,
              help="POP3 port (0: no POP3).")
@click.option("--listen", default="127.0.0.1", show_default=True,
              help="Address Dovecot listens on; anything but loopback needs --users and "
                   "[smtp] tls.")
@click.option("--users", "users_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Users and passwords: the file `mailqueue user add` writes. Default: "
                   "[smtp] users_file if set.")
@click.option("--any-password", is_flag=True,
              help="Let any password log in (a test rig on loopback; wrong passwords then "
                   "do not exist).")
@click.option("--fail-open", is_flag=True,
              help="Let logins through when mailqueue cannot be asked (default: refuse).")
def dovecot_config(config_path: str | None, directory: Path | None, imap_port: int,
                   pop3_port: int, listen: str, users_file: Path | None, any_password: bool,
                   fail_open: bool) -> None:
    """Write DIR/dovecot.conf: IMAP and POP3 on the stores' Maildirs, each login checked
    with mailqueue's admin endpoint after its password (refused, with the reason, while
    the mailbox's store is in a window or its node is down). Start it with
    `dovecot -F -c DIR/dovecot.conf` while `mailqueue serve` runs."""
    from mailqueue.access.dovecot import DovecotOptions, write_config
    from mailqueue.errors import ConfigError
    from mailqueue.smtp.users import read_users

    if config_path is None:
        raise click.UsageError("give -c CONFIG (or set MAILQUEUE_CONFIG)")
    if any_password and users_file is not None:
        raise click.UsageError("--users and --any-password exclude each other")
    config = load(config_path)
    if not any_password:
        users_file = users_file or config.smtp.users_file
        if users_file is None:
            raise click.UsageError("say who may log in: --users FILE (written by `mailqueue "
                                   "user add`), [smtp] users_file in the config, or "
                                   "--any-password on loopback")
        if not users_file.is_file():
            raise ConfigError(f"users file {users_file}: no such file (add users with "
                              f"`mailqueue user add NAME --file {users_file}`)")
        read_users(users_file)  # Dovecot reads the same lines: a file it cannot use fails here
    options = DovecotOptions(directory=directory or _default_dir(config),
                             imap_port=imap_port or None, pop3_port=pop3_port or None,
                             listen=listen, users_file=users_file, fail_open=fail_open)
    path = write_config(config, options)
    click.echo(f"wrote {path}")
    for name, port in (("IMAP", options.imap_port), ("POP3", options.pop3_port)):
        if port is not None:
            click.echo(f"  {name}: {listen}:{port}")
    click.echo(f"start it with: dovecot -F -c {path}")


def _default_dir(config: Config) -> Path:
    from mailqueue.errors import ConfigError
    from mailqueue.sqliteurl import sqlite_path

    database = sqlite_path(config.queue.url)
    if database is None or database.startswith("file:") or database == ":memory:":
        raise ConfigError("the queue is not a SQLite file to keep Dovecot's files beside: "
                          "give --dir")
    return Path(database).absolute().parent / "dovecot"

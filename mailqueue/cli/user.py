"""``mailqueue user``: the users ``AUTH`` checks, in ``[smtp] users_file``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailqueue.cli._common import config_option, load
from mailqueue.errors import UsersError


def _file_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option("--file", "users_file", type=click.Path(dir_okay=False, path_type=Path),
                        help="The users file to use instead of the config's "
                             "[smtp] users_file.")(func)


def _users_file(config_path: str | None, users_file: Path | None) -> Path:
    if users_file is not None:
        return users_file
    if config_path is None:
        raise click.UsageError("give -c CONFIG (its [smtp] users_file) or --file PATH")
    path = load(config_path).smtp.users_file
    if path is None:
        raise click.UsageError(f"{config_path} sets no [smtp] users_file: set it (and "
                               "[smtp] tls), or give --file PATH")
    return path


def _name(value: str) -> str:
    from mailqueue.smtp.users import check_user_name

    try:
        return check_user_name(value)
    except UsersError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group("user")
def user() -> None:
    """Users who may AUTH (PLAIN or LOGIN, over TLS), kept in [smtp] users_file.

    A running server rereads the file when it changes: no restart is needed.
    """


@user.command("add", short_help="Add a user, or with --replace set a new password.")
@config_option
@_file_option
@click.argument("name")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input instead of "
                   "prompting (for scripts).")
@click.option("--replace", is_flag=True, help="Set a new password for an existing user.")
def user_add(config_path: str | None, users_file: Path | None, name: str,
             password_stdin: bool, replace: bool) -> None:
    """Add user NAME with a password (prompted for twice, or read with --password-stdin),
    stored as a salted Argon2id hash. The file and its directory are created if missing;
    the file is mode 0600."""
    from mailqueue.smtp.users import editing, hasher

    name = _name(name)
    path = _users_file(config_path, users_file)
    password = _read_password(password_stdin)
    with editing(path, create=True) as users:
        if name in users and not replace:
            raise UsersError(f"user {name!r} is already in {path}; add --replace to set a "
                             "new password")
        users[name] = hasher().hash(password)
    click.echo(f"{'password set for' if replace else 'added'} user {name} in {path}")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password.removesuffix("\r")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.UsageError("the password is empty")
    return password


@user.command("remove", short_help="Remove users.")
@config_option
@_file_option
@click.argument("names", nargs=-1, required=True)
def user_remove(config_path: str | None, users_file: Path | None,
                names: tuple[str, ...]) -> None:
    """Remove the users NAMES; their sessions already authenticated keep going."""
    from mailqueue.smtp.users import editing

    path = _users_file(config_path, users_file)
    with editing(path) as users:
        missing = [name for name in names if name not in users]
        if missing:
            raise UsersError(f"no user {', '.join(map(repr, missing))} in {path}")
        for name in names:
            del users[name]
    click.echo(f"removed {len(names)} user(s) from {path}")


@user.command("list", short_help="List the users.")
@config_option
@_file_option
def user_list(config_path: str | None, users_file: Path | None) -> None:
    """Print the users' names, one a line (never their hashes)."""
    from mailqueue.smtp.users import read_users

    for name in sorted(read_users(_users_file(config_path, users_file))):
        click.echo(name)

"""The ``mailqueue`` command line: the ``cli`` group, its commands, and :func:`main`.

Each command or command group lives in the module of its name (``serve``, ``window``,
``queue`` ...); this module registers them all and turns errors into one line on stderr.
"""

from __future__ import annotations

import errno
import sys

import click

from mailqueue import __version__
from mailqueue.cli import (
    db,
    dovecot,
    node,
    queue,
    rehearse,
    serve,
    stats,
    traffic,
    user,
    verify,
    window,
)
from mailqueue.errors import InvalidInputError, MailqueueError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailqueue")
def cli() -> None:
    """Accept mail during a maintenance window, queue it durably, deliver it after."""


# Every command and command group, each from its module: registered here and nowhere else
# (``mailqueue --help`` lists them sorted by name).
COMMANDS: tuple[click.Command, ...] = (
    serve.serve, window.window, stats.stats, queue.queue, verify.verify, rehearse.rehearse,
    node.node, db.db, user.user, dovecot.dovecot, traffic.traffic,
)
for command in COMMANDS:
    cli.add_command(command)


# click >= 8.2 raises this for a group called without its command (its message is the help)
_NO_ARGS_HELP: tuple[type[click.ClickException], ...] = tuple(
    e for e in (getattr(click.exceptions, "NoArgsIsHelpError", None),) if e is not None)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage and domain errors become one line on stderr, never a traceback."""
    try:
        cli.main(args=argv, prog_name="mailqueue", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except _NO_ARGS_HELP as exc:
        click.echo(exc.format_message(), err=True)  # a group without its command: help
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"mailqueue: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except InvalidInputError as exc:  # arguments that do not fit: a usage error
        click.echo(f"mailqueue: error: {exc}", err=True)
        sys.exit(2)
    except MailqueueError as exc:
        click.echo(f"mailqueue: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BaseExceptionGroup as group:
        message = _user_message(group)
        if message is None:
            raise
        click.echo(f"mailqueue: error: {message}", err=True)
        sys.exit(1)


def _user_message(group: BaseExceptionGroup[BaseException]) -> str | None:
    """The one-line message of a task group's failure a user can act on, if there is one.

    A failed start-up (the SMTP port taken, a Maildir path that cannot be created) ends the
    app's TaskGroup with an exception group; its first mailqueue or OS error is the cause.
    """
    def _leaves(exc: BaseException) -> list[BaseException]:
        if isinstance(exc, BaseExceptionGroup):
            return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
        return [exc]

    for leaf in _leaves(group):
        if isinstance(leaf, MailqueueError):
            return str(leaf)
        if isinstance(leaf, OSError):
            if leaf.errno == errno.EADDRINUSE:
                return (f"{leaf.strerror or leaf}; free the port or choose another "
                        "(serve --port, [smtp] port, [[smtp.listeners]] port, [admin] port)")
            where = f": {leaf.filename}" if leaf.filename else ""
            return f"{leaf.strerror or leaf}{where}"
    return None

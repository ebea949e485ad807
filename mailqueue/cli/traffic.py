"""``mailqueue traffic``: turn mail logs into a traffic profile (``profile``), and show one
(``show``)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailqueue.cli._common import config_option, load
from mailqueue.errors import TimeParseError
from mailqueue.timeparse import get_zone, parse_duration, parse_time

if TYPE_CHECKING:
    from mailqueue.traffic.profile import TrafficProfile
    from mailqueue.traffic.reader import LogReader


@click.group(short_help="Turn mail logs into a traffic profile; show one.")
def traffic() -> None:
    """Traffic profiles: the shape of a server's inbound mail, read from its Postfix or Exim
    logs, for rehearsals to replay (a scenario's [traffic] profile = "FILE")."""


@traffic.command("profile", short_help="Read mail logs into a traffic profile (JSON).")
@click.argument("logs", nargs=-1, required=True, metavar="LOG...")
@click.option("-o", "--output", required=True, metavar="FILE",
              help="The profile file to write (JSON).")
@click.option("--timezone", metavar="ZONE", help="The zone of log times without an offset "
              "(syslog's, Exim's), e.g. Europe/Berlin. Default: this machine's.")
@click.option("--year", type=click.IntRange(1970, 9999), help="The year of the newest "
              "file's last line, for syslog times without one (default: from the file's "
              "modification time).")
@click.option("--since", metavar="TIME", help="Only mail from this time on (e.g. "
              "\"2024-03-04 00:00\", in --timezone).")
@click.option("--until", metavar="TIME", help="Only mail before this time.")
@click.option("--resolution", default="1m", show_default=True, metavar="DURATION",
              help="Arrivals are counted per interval of this length (1s to 1h, dividing "
              "an hour).")
@click.option("--strict", is_flag=True, help="A line in no known log form is an error "
              "naming its file and line (default: counted and skipped).")
@config_option
def profile(logs: tuple[str, ...], output: str, timezone: str | None, year: int | None,
            since: str | None, until: str | None, resolution: str, strict: bool,
            config_path: str | None) -> None:
    """Read LOG... (Postfix or Exim logs; rotated and gzip'd sets in any order) into a
    traffic profile: arrivals per interval, message sizes, recipients per message,
    recipient and sender domains. Addresses are not kept (counts and domains only); no
    message content is read. With a config (-c), recipients are also counted per
    configured store."""
    from mailqueue.traffic.profile import save_profile
    from mailqueue.traffic.reader import LogReader, ReadOptions
    from mailqueue.traffic.show import show_text

    zone = timezone or local_zone()
    try:
        get_zone(zone)
    except TimeParseError as exc:
        raise click.UsageError(f"--timezone: {exc}") from None
    stores = None
    if config_path:
        config = load(config_path)
        stores = {domain.lower(): s.name for s in config.stores for domain in s.domains}
    options = ReadOptions(timezone=zone, resolution=_resolution(resolution), strict=strict,
                          year=year, since=_time("--since", since, zone),
                          until=_time("--until", until, zone), stores=stores)
    target = Path(output)
    if target.is_dir():
        raise click.UsageError(f"-o/--output: {target} is a directory; name the profile file")
    reader = LogReader([Path(p) for p in logs], options)
    result = _with_progress(reader)
    save_profile(result, target)
    sys.stdout.write(show_text(result, str(target)))


@traffic.command("show", short_help="Print a traffic profile's shape; draw it.")
@click.argument("profile_path", metavar="PROFILE")
@click.option("--chart", metavar="PNG", help="Also draw the profile into this PNG file.")
def show(profile_path: str, chart: str | None) -> None:
    """Print PROFILE's shape: totals, the busiest hour and minute, sizes, recipients per
    message, domains, and what the log lines were; with --chart, draw arrivals, sizes and
    recipients into a PNG."""
    from mailqueue.errors import ProfileError
    from mailqueue.traffic.profile import load_profile
    from mailqueue.traffic.show import show_text

    loaded = load_profile(profile_path)
    sys.stdout.write(show_text(loaded, profile_path))
    if chart:
        from mailqueue.traffic.chart import draw_profile

        try:
            draw_profile(loaded, Path(chart), Path(profile_path).name)
        except OSError as exc:
            raise ProfileError(f"--chart: cannot write {chart}: {exc.strerror or exc}"
                               ) from None
        print(f"chart: {chart}")


def _resolution(value: str) -> int:
    try:
        seconds = parse_duration(value)
    except TimeParseError as exc:
        raise click.UsageError(f"--resolution: {exc}") from None
    if seconds != int(seconds) or not 1 <= seconds <= 3600 or 3600 % int(seconds):
        raise click.UsageError(f"--resolution: give a length that divides an hour (1s, 10s, "
                               f"1m, 5m, 15m, 1h), not {value!r}")
    return int(seconds)


def _time(option: str, value: str | None, zone: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value, zone)
    except TimeParseError as exc:
        raise click.UsageError(f"{option}: {exc}") from None


def local_zone() -> str:
    """This machine's IANA zone name: ``TZ``, ``/etc/localtime``'s link, ``/etc/timezone``,
    else UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        candidates.append(os.readlink("/etc/localtime").partition("zoneinfo/")[2])
    with contextlib.suppress(OSError, UnicodeDecodeError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    for name in candidates:
        if name:
            try:
                get_zone(name)
            except TimeParseError:
                continue
            return name
    return "UTC"


def _with_progress(reader: LogReader) -> TrafficProfile:
    """Run the reader, with a progress bar on a terminal (stderr)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    if not console.is_terminal:
        return reader.run()
    columns = (TextColumn("reading logs"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("logs", total=reader.total_bytes)
        return reader.run(lambda done: bar.advance(task, done))

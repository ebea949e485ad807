"""A traffic profile: the shape of a server's inbound mail, read from its logs.

What it holds — counts and domains, never an address:

- ``arrivals``: messages accepted per interval (``resolution`` seconds, one minute by
  default) from the first to the last line of the logs, so quiet stretches count as 0;
- ``sizes``: a histogram of message sizes, eight bins per doubling (``[low, high, count]``,
  ``low`` inclusive);
- ``recipients``: messages by their number of recipients;
- ``recipient_domains`` and ``sender_domains``: recipients per domain (the busiest ones;
  the rest counted in ``*_other``), ``<>`` for the null sender;
- ``stores``: with a config, recipients per configured store and ``(unmapped)``;
- ``sources`` and ``parse``: the files read and what their lines were.

:class:`ProfileBuilder` adds one message at a time in constant memory per interval;
:func:`save_profile` and :func:`load_profile` write and read the JSON file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mailqueue._files import replace_file
from mailqueue.config import describe_errors
from mailqueue.errors import ProfileError
from mailqueue.timeparse import format_time, get_zone

FORMAT: Literal["mailqueue-traffic-profile"] = "mailqueue-traffic-profile"
SIZE_STEPS = 8  # size bins per doubling: each about 9 % wide
TOP_RECIPIENT_DOMAINS = 500
TOP_SENDER_DOMAINS = 100
NULL_SENDER = "<>"
NO_DOMAIN = "(none)"  # a recipient or sender without a domain (a local name)
UNMAPPED = "(unmapped)"  # recipients of a domain no configured store holds
MAX_INTERVALS = 10_000_000
_NUMBERS = re.compile(r"\[\s+(\d+,\s+\d+,\s+\d+)\s+\]")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Span(_Model):
    """From the first to the last mail line of the logs."""

    start: str
    end: str
    start_ts: float
    end_ts: float


class Totals(_Model):
    messages: int = Field(ge=0)
    recipients: int = Field(ge=0)
    bytes: int = Field(ge=0)


class Arrivals(_Model):
    """Messages per interval, the first interval starting at ``start_ts``."""

    start: str
    start_ts: float
    resolution: int = Field(ge=1, le=86400)
    counts: list[int]


class Source(_Model):
    """One file read."""

    file: str
    format: str  # postfix, exim, postfix+exim, or "" (no mail lines)
    lines: int = Field(ge=0)
    mail_lines: int = Field(ge=0)
    first: str | None = None
    last: str | None = None


class Parse(_Model):
    """What the lines were."""

    lines: int = Field(0, ge=0)
    mail_lines: int = Field(0, ge=0)
    other_programs: int = Field(0, ge=0)
    unknown: int = Field(0, ge=0)
    truncated: int = Field(0, ge=0)
    clock_jumps: int = Field(0, ge=0)
    largest_clock_jump_seconds: float = Field(0.0, ge=0)
    rejected: int = Field(0, ge=0)  # refused before a queue id (NOQUEUE, Exim's rejected)
    generated: int = Field(0, ge=0)  # bounces and notices the server made itself
    reinjected: int = Field(0, ge=0)  # back from a content filter on the same host
    incomplete: int = Field(0, ge=0)  # begun in the logs, never queued (dropped, cut off)
    before_log: int = Field(0, ge=0)  # received before the logs begin (no client= line)
    outside: int = Field(0, ge=0)  # arrived outside --since/--until


class TrafficProfile(_Model):
    """A traffic profile (see the module's docstring)."""

    format: Literal["mailqueue-traffic-profile"] = FORMAT
    version: Literal[1] = 1
    timezone: str
    span: Span
    totals: Totals
    arrivals: Arrivals
    sizes: list[tuple[int, int, int]]
    recipients: dict[str, int]
    recipient_domains: dict[str, int]
    recipient_domains_other: int = Field(0, ge=0)
    sender_domains: dict[str, int]
    sender_domains_other: int = Field(0, ge=0)
    stores: dict[str, int] | None = None
    sources: list[Source] = []
    parse: Parse = Parse()

    @property
    def resolution(self) -> int:
        return self.arrivals.resolution

    def interval_start(self, index: int) -> float:
        """When arrival interval ``index`` begins."""
        return self.arrivals.start_ts + index * self.arrivals.resolution

    def recipient_counts(self) -> dict[int, int]:
        """Messages by number of recipients, as numbers."""
        return {int(n): count for n, count in self.recipients.items()}


# --- building ----------------------------------------------------------------------------

def size_bin(size: int) -> int:
    """The histogram bin of a size: ``floor(SIZE_STEPS * log2(size))`` (0 for 0 and 1)."""
    return int(SIZE_STEPS * math.log2(size)) if size > 1 else 0


def bin_bounds(index: int) -> tuple[int, int]:
    """The sizes a bin holds: ``low`` inclusive, ``high`` exclusive."""
    return (math.ceil(2 ** (index / SIZE_STEPS)) if index else 0,
            math.ceil(2 ** ((index + 1) / SIZE_STEPS)))


class BoundedCounter:
    """Counts per key in bounded memory: past ``limit`` keys, the least counted half is
    folded into :attr:`other` (the busiest keys stay exact, or nearly)."""

    def __init__(self, limit: int = 50_000) -> None:
        self.counts: dict[str, int] = {}
        self.other = 0
        self._limit = limit

    def add(self, key: str, count: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + count
        if len(self.counts) > self._limit:
            keep = sorted(self.counts.items(), key=lambda item: -item[1])[:self._limit // 2]
            self.other += sum(self.counts.values()) - sum(n for _, n in keep)
            self.counts = dict(keep)

    def top(self, count: int) -> tuple[dict[str, int], int]:
        """The ``count`` busiest keys, and the count of all the others."""
        ordered = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        rest = sum(n for _, n in ordered[count:])
        return dict(ordered[:count]), self.other + rest


class ProfileBuilder:
    """Collects messages into a profile; memory grows with the intervals, not the mail."""

    def __init__(self, timezone: str, resolution: int = 60,
                 stores: Mapping[str, str] | None = None, since: float | None = None,
                 until: float | None = None) -> None:
        self.timezone = timezone
        self.resolution = resolution
        self.since = since
        self.until = until
        self.first: float | None = None
        self.last: float | None = None
        self.arrivals: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.recipients: dict[int, int] = {}
        self.recipient_domains = BoundedCounter()
        self.sender_domains = BoundedCounter()
        self._store_of = {domain.lower(): store for domain, store in (stores or {}).items()}
        self.stores: dict[str, int] | None = {name: 0 for name in
                                              dict.fromkeys((stores or {}).values())} \
            if stores is not None else None
        self.messages = 0
        self.recipient_total = 0
        self.bytes = 0
        self.outside = 0

    def seen(self, ts: float) -> None:
        """A mail line's time: the span runs from the first to the last."""
        if (self.since is not None and ts < self.since) or \
                (self.until is not None and ts >= self.until):
            return
        if self.first is None or ts < self.first:
            self.first = ts
        if self.last is None or ts > self.last:
            self.last = ts

    def add(self, at: float, size: int, domains: Mapping[str, int], sender_domain: str) -> None:
        """One accepted message: arrived ``at``, ``size`` bytes, recipients by domain."""
        if (self.since is not None and at < self.since) or \
                (self.until is not None and at >= self.until):
            self.outside += 1
            return
        self.seen(at)
        slot = int(at // self.resolution)
        self.arrivals[slot] = self.arrivals.get(slot, 0) + 1
        index = size_bin(size)
        self.sizes[index] = self.sizes.get(index, 0) + 1
        count = sum(domains.values())
        self.recipients[count] = self.recipients.get(count, 0) + 1
        for domain, n in domains.items():
            self.recipient_domains.add(domain, n)
            if self.stores is not None:
                store = self._store_of.get(domain, UNMAPPED)
                self.stores[store] = self.stores.get(store, 0) + n
        self.sender_domains.add(sender_domain)
        self.messages += 1
        self.recipient_total += count
        self.bytes += size

    def build(self, sources: list[Source], parse: Parse) -> TrafficProfile:
        """The profile; ProfileError if no message was found or the span is too long."""
        if not self.messages or self.first is None or self.last is None:
            raise ProfileError("no accepted messages in the logs")
        first_slot = int(self.first // self.resolution)
        count = int(self.last // self.resolution) - first_slot + 1
        if count > MAX_INTERVALS:
            raise ProfileError(
                f"the logs span {format_time(self.first, self.timezone)} to "
                f"{format_time(self.last, self.timezone)}: {count} intervals of "
                f"{self.resolution} s; profile a shorter stretch (--since, --until) or give "
                "a coarser --resolution")
        counts = [self.arrivals.get(first_slot + i, 0) for i in range(count)]
        start = first_slot * self.resolution
        recipient_domains, rd_other = self.recipient_domains.top(TOP_RECIPIENT_DOMAINS)
        sender_domains, sd_other = self.sender_domains.top(TOP_SENDER_DOMAINS)
        zone = self.timezone
        return TrafficProfile(
            timezone=zone,
            span=Span(start=format_time(self.first, zone), end=format_time(self.last, zone),
                      start_ts=self.first, end_ts=self.last),
            totals=Totals(messages=self.messages, recipients=self.recipient_total,
                          bytes=self.bytes),
            arrivals=Arrivals(start=format_time(start, zone), start_ts=start,
                              resolution=self.resolution, counts=counts),
            sizes=[(*bin_bounds(i), n) for i, n in sorted(self.sizes.items())],
            recipients={str(n): c for n, c in sorted(self.recipients.items())},
            recipient_domains=recipient_domains, recipient_domains_other=rd_other,
            sender_domains=sender_domains, sender_domains_other=sd_other,
            stores=self.stores, sources=sources,
            parse=parse.model_copy(update={"outside": self.outside}))


# --- the file ----------------------------------------------------------------------------

def profile_json(profile: TrafficProfile) -> str:
    """The profile as JSON text: indented, the arrival counts on one line."""
    data = profile.model_dump(mode="json")
    counts = data["arrivals"].pop("counts")
    data["arrivals"]["counts"] = "@COUNTS@"
    text = json.dumps(data, indent=2, ensure_ascii=False)
    # One size bin a line.
    text = _NUMBERS.sub(lambda m: "[" + " ".join(m.group(1).split()) + "]",
                        text)
    return text.replace('"@COUNTS@"', json.dumps(counts, separators=(",", ":"))) + "\n"


def save_profile(profile: TrafficProfile, path: Path) -> None:
    """Write the profile to ``path`` (whole, or not at all); ProfileError naming the path."""
    try:
        replace_file(path, profile_json(profile).encode("utf-8"), 0o644)
    except OSError as exc:
        raise ProfileError(f"cannot write {path}: {exc.strerror or exc}") from None


def load_profile(path: str | Path) -> TrafficProfile:
    """Read a profile file; ProfileError naming the file and what is wrong."""
    source = Path(path)
    try:
        data = json.loads(source.read_bytes())
    except FileNotFoundError:
        raise ProfileError(f"{source}: no such file (make one with: mailqueue traffic "
                           "profile LOG... -o FILE)") from None
    except IsADirectoryError:
        raise ProfileError(f"{source}: is a directory, not a traffic profile") from None
    except OSError as exc:
        raise ProfileError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise ProfileError(f"{source}: not a traffic profile (not JSON)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ProfileError(f"{source}: not a traffic profile (made by mailqueue traffic "
                           "profile)")
    try:
        profile = TrafficProfile.model_validate(data)
        get_zone(profile.timezone)
    except ValidationError as exc:
        raise ProfileError(f"{source}: not a traffic profile: {describe_errors(exc)}"
                           ) from None
    except ValueError as exc:
        raise ProfileError(f"{source}: timezone: {exc}") from None
    _check(profile, source)
    return profile


def _check(profile: TrafficProfile, source: Path) -> None:
    if not profile.arrivals.counts or min(profile.arrivals.counts) < 0 or \
            sum(profile.arrivals.counts) != profile.totals.messages:
        raise ProfileError(f"{source}: arrivals.counts: must add up to totals.messages")
    if any(n < 0 for _, _, n in profile.sizes) or \
            sum(n for _, _, n in profile.sizes) != profile.totals.messages:
        raise ProfileError(f"{source}: sizes: must add up to totals.messages")
    counts = profile.recipients
    if any(not n.isdigit() or c < 0 for n, c in counts.items()) or \
            sum(counts.values()) != profile.totals.messages:
        raise ProfileError(f"{source}: recipients: give messages by number of recipients "
                           "(adding up to totals.messages)")

"""Replaying a traffic profile in a rehearsal: which log moment each scenario moment
replays, and the plan of messages drawn from it.

:class:`ArrivalMap` walks the scenario in the profile's intervals and finds, for each,
the log interval it replays. Both sides are read as wall-clock time, each in its own
zone: with the default ``shift`` ("week") a moment replays the same weekday and time of
day of the log, from the log's week that covers most of the scenario (another of its
weeks where that one does not reach; for a log shorter than a week, the nearest day at
the same time of day). With ``shift`` a time of the log, that time plays at the
scenario's start and the log runs on from there; a moment past the log's end replays
nothing.

:func:`plan_replay` keeps each logged message with probability ``scale`` (or sends it
``scale`` times, the fraction drawn), at a random moment within its interval — bursts
stay where they were, to the interval — and draws its size, recipient count, recipient
domains and sender domain from the profile's distributions. A recipient domain one of
the scenario's stores holds goes to that store; any other (the log's own domains) goes
to a store drawn by ``[traffic] stores`` (even when absent). Recipients are
``userNNNNN@domain`` of the store's ``users``, as synthetic traffic's are.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from mailqueue.config import describe_errors
from mailqueue.rehearsal.profile import Replay, load_replay
from mailqueue.rehearsal.scenario import Scenario, StoreSpec, TrafficSpec
from mailqueue.rehearsal.traffic import Planned
from mailqueue.timeparse import get_zone, parse_size
from mailqueue.traffic.profile import NO_DOMAIN, NULL_SENDER, TrafficProfile

WEEK = 7 * 86400
DAY = 86400
_LOCAL_PARTS = ("alerts", "billing", "info", "jane.doe", "john.smith", "noreply", "orders",
                "support", "team", "updates")
OTHER_SENDERS = "other.example"  # the senders a profile counts without naming the domain
DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_RECIPIENTS = 100


def wall(ts: float, zone: ZoneInfo) -> float:
    """``ts`` as wall-clock seconds in ``zone`` (the POSIX time the same wall clock would
    show in UTC): weekday and time of day compare across zones and DST."""
    offset = datetime.fromtimestamp(ts, zone).utcoffset()
    return ts + (offset.total_seconds() if offset is not None else 0.0)


class ArrivalMap:
    """Which log interval each interval of the scenario replays (see the module)."""

    def __init__(self, replay: Replay, start: float, end: float, zone: str) -> None:
        profile = replay.profile
        self.resolution = profile.resolution
        self.start, self.end = start, end
        self._zone = get_zone(zone)
        self._shift = replay.shift
        log_zone = get_zone(profile.timezone)
        self._counts: dict[int, int] = {}
        for index, count in enumerate(profile.arrivals.counts):
            if count:
                slot = int(wall(profile.interval_start(index), log_zone) // self.resolution)
                self._counts[slot] = self._counts.get(slot, 0) + count
        self._low = wall(profile.arrivals.start_ts, log_zone)
        self._high = wall(profile.interval_start(len(profile.arrivals.counts)), log_zone)
        self._start_wall = wall(start, self._zone)
        self._base = wall(replay.shift, log_zone) if replay.shift is not None else 0.0
        self._weeks = self._best_week() if replay.shift is None else 0

    def intervals(self) -> Iterator[tuple[float, int | None]]:
        """``(scenario interval start, log messages in the interval it replays)``, None
        where the log has no moment to replay."""
        t = self.start
        while t < self.end:
            moment = self.log_wall(wall(t, self._zone))
            yield t, None if moment is None else \
                self._counts.get(int(moment // self.resolution), 0)
            t += self.resolution

    def coverage(self) -> float:
        """The share of the scenario's intervals that replay a moment of the log."""
        found = [count is not None for _, count in self.intervals()]
        return sum(found) / len(found) if found else 0.0

    def log_wall(self, moment: float) -> float | None:
        """The log's wall time a scenario wall time replays, or None."""
        if self._shift is not None:
            at = self._base + (moment - self._start_wall)
            return at if self._low <= at < self._high else None
        weeks = _nearest(moment, self._low, self._high, WEEK, self._weeks)
        if weeks is not None:
            return moment - weeks * WEEK
        there = moment - self._weeks * WEEK
        days = _nearest(there, self._low, self._high, DAY, 0)
        return None if days is None else there - days * DAY

    def _best_week(self) -> int:
        """The whole number of weeks back that lays the scenario over most of the log (the
        latest such week on a tie)."""
        first, last = self._start_wall, wall(self.end, self._zone)
        lowest = math.floor((first - self._high) / WEEK)
        highest = math.ceil((last - self._low) / WEEK)
        best, most = lowest, -1.0
        for weeks in range(lowest, highest + 1):
            overlap = min(last - weeks * WEEK, self._high) - \
                max(first - weeks * WEEK, self._low)
            if overlap > most + 1e-9 or (abs(overlap - most) <= 1e-9 and weeks < best):
                best, most = weeks, overlap
        return best


def _nearest(moment: float, low: float, high: float, period: int, preferred: int
             ) -> int | None:
    """The whole number of periods ``n``, nearest ``preferred``, with ``moment - n *
    period`` in ``[low, high)``; None when there is none."""
    smallest = math.floor((moment - high) / period) + 1
    largest = math.floor((moment - low) / period)
    if smallest > largest:
        return None
    return min(max(preferred, smallest), largest)


class Draws:
    """Sizes, recipients and senders drawn from a profile's distributions."""

    def __init__(self, profile: TrafficProfile, scenario: Scenario, rng: random.Random
                 ) -> None:
        self._rng = rng
        self._sizes = [(max(low, 1), high) for low, high, _ in profile.sizes]
        self._size_weights = _cumulative([n for _, _, n in profile.sizes])
        counts = profile.recipient_counts()
        self._counts = sorted(counts)
        self._count_weights = _cumulative([counts[n] for n in self._counts])
        domains = {**profile.recipient_domains}
        if profile.recipient_domains_other:
            domains[NO_DOMAIN] = domains.get(NO_DOMAIN, 0) + profile.recipient_domains_other
        self._domains = list(domains)
        self._domain_weights = _cumulative(list(domains.values()))
        senders = {**profile.sender_domains}
        if profile.sender_domains_other:
            senders[OTHER_SENDERS] = senders.get(OTHER_SENDERS, 0) + \
                profile.sender_domains_other
        self._senders = list(senders)
        self._sender_weights = _cumulative(list(senders.values()))
        stores = scenario.file.stores
        self._by_domain = {d.lower(): s for s in stores for d in s.domains}
        mix = scenario.file.traffic.stores or {s.name: 1.0 for s in stores}
        named = {s.name: s for s in stores}
        self._stores = [named[name] for name in mix]
        self._store_weights = _cumulative(list(mix.values()))
        smtp = scenario.file.server.get("smtp", {})
        self.max_size = parse_size(smtp.get("max_message_size", DEFAULT_MAX_SIZE)) or None
        self.max_recipients = min(int(smtp.get("max_recipients", DEFAULT_MAX_RECIPIENTS)),
                                  sum(s.users for s in stores))

    def size(self) -> int:
        """A size, uniform on a log scale within a bin drawn by its count."""
        low, high = self._sizes[_pick(self._rng, self._size_weights)]
        size = int(low * (high / low) ** self._rng.random())
        size = max(size, 300)  # headers alone take that much
        return min(size, self.max_size) if self.max_size else size

    def recipients(self) -> tuple[str, ...]:
        count = min(self._counts[_pick(self._rng, self._count_weights)], self.max_recipients)
        chosen: list[str] = []
        for _ in range(count * 3):
            address = self._recipient()
            if address not in chosen:
                chosen.append(address)
            if len(chosen) == count:
                break
        return tuple(chosen)

    def _recipient(self) -> str:
        domain = self._domains[_pick(self._rng, self._domain_weights)].lower()
        store = self._by_domain.get(domain)
        if store is None:  # not a domain of this scenario: a store drawn by its weight
            store = self._stores[_pick(self._rng, self._store_weights)]
            domain = self._rng.choice(store.domains)
        return f"user{int(store.users * self._rng.random() ** 2):05d}@{domain}"

    def sender(self) -> str:
        domain = self._senders[_pick(self._rng, self._sender_weights)]
        if domain == NULL_SENDER:
            return ""
        if domain == NO_DOMAIN:
            domain = "localhost"
        return f"{self._rng.choice(_LOCAL_PARTS)}@{domain}"


def _cumulative(weights: Sequence[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _pick(rng: random.Random, cumulative: Sequence[float]) -> int:
    return min(bisect.bisect_right(cumulative, rng.random() * cumulative[-1]),
               len(cumulative) - 1)


def copies(rng: random.Random, scale: float) -> int:
    """How many times to send one logged message: ``scale`` on average."""
    whole = math.floor(scale)
    return whole + (1 if rng.random() < scale - whole else 0)


def plan_replay(scenario: Scenario, seed: int) -> list[Planned]:
    """Every message the replay sends between the scenario's start and end, drawn from
    ``seed`` (see the module's docstring)."""
    replay = scenario.replay
    assert replay is not None
    rng = random.Random(seed)
    draws = Draws(replay.profile, scenario, rng)
    arrivals = ArrivalMap(replay, scenario.start, scenario.end, scenario.timezone)
    drawn: list[tuple[float, str, tuple[str, ...], int]] = []
    for start, count in arrivals.intervals():
        for _ in range(count or 0):
            for _ in range(copies(rng, replay.scale)):
                at = start + rng.random() * arrivals.resolution
                if at < scenario.end:
                    drawn.append((at, draws.sender(), draws.recipients(), draws.size()))
    drawn.sort(key=lambda item: item[0])
    return [Planned(seq=seq, at=at, sender=sender, recipients=recipients, size=size)
            for seq, (at, sender, recipients, size) in enumerate(drawn, start=1)]


def expected(scenario: Scenario, interval: float) -> list[float]:
    """Messages the profile puts in each ``interval`` of the scenario, times the scale
    (what a faithful replay sends, on average)."""
    replay = scenario.replay
    assert replay is not None
    arrivals = ArrivalMap(replay, scenario.start, scenario.end, scenario.timezone)
    slots = math.ceil((scenario.end - scenario.start) / interval)
    out = [0.0] * slots
    for start, count in arrivals.intervals():
        if count:
            out[min(int((start - scenario.start) // interval), slots - 1)] += \
                count * replay.scale
    return out


def with_profile(scenario: Scenario, path: str | None = None, scale: str | None = None,
                 shift: str | None = None) -> Scenario:
    """``scenario`` with its traffic replayed from the profile at ``path`` (relative to
    the current directory; default: the scenario's own ``[traffic] profile``), at
    ``scale`` and ``shift`` when given — what ``rehearse --profile`` does. Synthetic
    traffic's keys are dropped, ``connections`` and ``stores`` kept. ValueError naming
    the ``[traffic]`` key of a value that cannot be."""
    traffic = scenario.file.traffic
    profile = str(Path(path).absolute()) if path else traffic.profile
    if not isinstance(profile, str):
        raise ValueError("traffic.profile: the scenario's traffic is synthetic; name a "
                         "traffic profile file")
    try:
        spec = TrafficSpec.model_validate({
            "connections": traffic.connections, "stores": traffic.stores, "profile": profile,
            "scale": traffic.scale if scale is None else scale,
            "shift": traffic.shift if shift is None else shift})
    except ValidationError as exc:
        raise ValueError(f"traffic.{describe_errors(exc)}") from None
    source = scenario.source if not path else "<command line>"
    file = scenario.file.model_copy(update={"traffic": spec})
    return dataclasses.replace(scenario, file=file, replay=load_replay(spec, source))


def store_of(scenario: Scenario) -> dict[str, StoreSpec]:
    """The scenario's stores by each of their domains."""
    return {d.lower(): s for s in scenario.file.stores for d in s.domains}

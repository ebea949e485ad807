"""Rehearsal scenarios: TOML files that describe an upgrade window to replay.

A scenario has a clock (simulated start, end and speed), mailbox stores sharded over nodes,
windows as in the core config, a timeline of events at simulated times, traffic, and
optionally mailbox probes (simulated users logging in on a schedule). It is
validated at load: an error names the file, the key and what to fix, e.g.
``june.toml: events[4]: window 'upgrade' has already ended at 2019-06-28T17:00:00-05:00``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from mailqueue.config import (
    ConfigModel,
    Duration,
    Name,
    PositiveDuration,
    Size,
    StoreKind,
    WindowConfig,
    Zone,
    describe_errors,
    no_duplicates,
    read_toml,
)
from mailqueue.control.nodes import NodeMode, find_node, mode_needs, node_name
from mailqueue.errors import ConfigError, NodeError, TimeParseError
from mailqueue.rehearsal.profile import Replay, load_replay, profile_value, scale_value
from mailqueue.timeparse import format_time, parse_time

WINDOW_ACTIONS = ("window.start", "window.extend", "window.end", "window.cancel")
NODE_ACTIONS = ("node.up", "node.down", "node.slow", "node.flaky")
Action = Literal["note", "window.start", "window.extend", "window.end", "window.cancel",
                 "node.up", "node.down", "node.slow", "node.flaky", "traffic"]


class ScenarioError(ConfigError):
    """A scenario file is invalid."""


class ScenarioInfo(ConfigModel):
    """``[scenario]``: the simulated clock."""

    name: str
    description: str = ""
    timezone: Zone = "UTC"
    start: str
    end: str
    speed: float = Field(3600.0, gt=0)  # simulated seconds per real second
    seed: int = 1
    sample: PositiveDuration = 600.0  # simulated seconds between two points of the series


class StoreSpec(ConfigModel):
    """``[[stores]]``: a store sharded over ``nodes``, with ``users`` mailboxes: Maildirs in
    the rehearsal's work directory, or (``kind = "lmtp"`` or ``"smtp"``) a staging mailbox
    tier on ``hosts``, one node per host. The other keys are the server config's."""

    name: Name
    domains: list[str] = Field(min_length=1)
    nodes: int = Field(1, ge=1, le=1000)
    users: int = Field(100, ge=1)
    kind: StoreKind = "maildir"
    hosts: list[str] | None = None
    verify_path: str | None = None  # relative to the scenario file's directory
    connections: int | None = None
    starttls: Literal["off", "opportunistic", "required"] | None = None
    tls_verify: bool | None = None
    tls_ca_file: str | None = None
    auth_user: str | None = None
    auth_password: str | None = Field(None, repr=False)
    helo: str | None = None
    timeouts: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _nodes_from_hosts(cls, data: Any) -> Any:
        """A remote store has one node per host (the server's config checks the rest)."""
        if isinstance(data, dict) and data.get("kind") in ("lmtp", "smtp") and \
                data.get("nodes") is None and isinstance(data.get("hosts"), list) and \
                data["hosts"]:
            return {**data, "nodes": len(data["hosts"])}
        return data

    def server_store(self, base: Path) -> dict[str, Any]:
        """This store as the server config's ``[[stores]]`` entry, for a remote store
        (paths relative to ``base``, the scenario file's directory)."""
        entry: dict[str, Any] = {"name": self.name, "kind": self.kind, "domains": self.domains,
                                 "nodes": self.nodes}
        for key in ("hosts", "connections", "starttls", "tls_verify", "auth_user",
                    "auth_password", "helo", "timeouts"):
            if (value := getattr(self, key)) is not None:
                entry[key] = value
        for key in ("verify_path", "tls_ca_file"):
            if (value := getattr(self, key)) is not None:
                entry[key] = str(base / value)
        return entry


class TrafficSpec(ConfigModel):
    """``[traffic]``: inbound mail, sent over real SMTP: synthetic, or replayed from a
    traffic profile (``profile = "FILE"``; see :mod:`mailqueue.rehearsal.profile`)."""

    rate: float = Field(60.0, ge=0)  # messages per simulated hour (mean over a day)
    # A list: 24 weights by local hour (scaled to mean 1); a string: a traffic profile file.
    profile: Annotated[list[float] | str | None, BeforeValidator(profile_value)] = None
    scale: Annotated[float | None, BeforeValidator(scale_value)] = None  # of a profile
    shift: str | None = None  # of a profile: "week" (the default) or a time of the log
    connections: int = Field(4, ge=1, le=200)
    size_median: Size = 8 * 1024
    size_sigma: float = Field(1.0, ge=0)  # lognormal spread
    size_max: Size = 512 * 1024
    recipients: list[float] = [1.0]  # weights of 1, 2, 3, ... recipients
    stores: dict[str, float] | None = None  # store -> weight; even when absent
    senders: dict[str, float] = {"example.net": 1.0}  # sender domain -> weight

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: list[float] | str | None) -> list[float] | str | None:
        if isinstance(value, list) and (len(value) != 24 or min(value) < 0 or not sum(value)):
            raise ValueError("give 24 non-negative weights (one per local hour), not all 0")
        return value

    @field_validator("recipients")
    @classmethod
    def _weights(cls, value: list[float]) -> list[float]:
        if not value or min(value) < 0 or not sum(value):
            raise ValueError("give weights for 1, 2, 3, ... recipients, not all 0")
        return value

    @field_validator("senders")
    @classmethod
    def _senders(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or min(value.values()) < 0 or not sum(value.values()):
            raise ValueError("give at least one sender domain with a positive weight")
        return value


ProbeWay = Literal["auto", "imap", "decision"]


class ProbesSpec(ConfigModel):
    """``[probes]``: simulated users logging in to their mailboxes every ``interval``
    (simulated time), over IMAP through Dovecot or by asking the access decision directly."""

    interval: PositiveDuration = 900.0
    # Per store (a number for every store, or a table store -> number); None: one per node.
    users: int | dict[str, int] | None = None
    addresses: list[str] | None = None  # these mailboxes instead of users
    via: ProbeWay = "auto"  # auto: IMAP when Dovecot is installed, else the decision
    connections: int = Field(4, ge=1, le=32)  # IMAP logins at once

    @field_validator("users", mode="before")
    @classmethod
    def _users(cls, value: Any) -> Any:
        def count(n: Any, least: int) -> bool:
            return isinstance(n, int) and not isinstance(n, bool) and n >= least

        if value is None or count(value, 1) or (
                isinstance(value, dict) and all(count(n, 0) for n in value.values())):
            return value
        raise ValueError("give a number of probe users per store (e.g. 2), or a table of "
                         "store = number (e.g. { basic = 2 })")

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one address, or leave addresses out")
        for index, address in enumerate(value):
            local, at, domain = address.partition("@")
            if not (local and at and domain) or "/" in local or local.startswith("."):
                raise ValueError(f"[{index}] {address!r} is not a mailbox address "
                                 "(local@domain)")
        no_duplicates("address", [a.lower() for a in value])
        return [a.lower() for a in value]


class EventSpec(ConfigModel):
    """``[[events]]``: something that happens at a simulated time."""

    at: str
    action: Action = "note"
    note: str = ""
    window: Name | None = None
    until: str | None = None  # window.extend / window.start
    store: str | None = None  # node.*: every node of this store
    nodes: list[str] | None = None  # node.*: these nodes
    latency: Duration = 0.0  # node.slow / node.flaky (simulated seconds per delivery)
    failure_rate: float = Field(0.0, ge=0.0, le=1.0)  # node.flaky
    fail_next: int = Field(0, ge=0, le=2**31 - 1)  # node.flaky
    rate: float | None = Field(None, ge=0)  # traffic: new mean rate
    factor: float | None = Field(None, ge=0)  # traffic: multiply the configured rate


class ScenarioFile(ConfigModel):
    """The whole file."""

    scenario: ScenarioInfo
    server: dict[str, Any] = {}  # [server.smtp] / [server.queue] / [server.delivery]
    stores: list[StoreSpec] = Field(min_length=1)
    windows: list[WindowConfig] = []
    traffic: TrafficSpec = TrafficSpec()
    events: list[EventSpec] = []
    probes: ProbesSpec | None = None
    report: dict[str, float] = {}


@dataclasses.dataclass(frozen=True)
class Event:
    """A validated event with its time resolved."""

    at: float
    spec: EventSpec
    nodes: tuple[str, ...] = ()
    # An extension due at the very moment its window is planned to end: the runner applies
    # it just before, so that the window does not lapse in between.
    at_window_end: bool = False

    @property
    def action(self) -> str:
        return self.spec.action

    def label(self) -> str:
        """What the status timeline says about it."""
        if self.spec.note:
            return self.spec.note
        target = self.spec.window or ", ".join(self.nodes) or ""
        return f"{self.action} {target}".strip()


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A loaded, validated scenario."""

    source: str
    file: ScenarioFile
    start: float
    end: float
    events: tuple[Event, ...]
    replay: Replay | None = None  # traffic from a profile, when [traffic] profile is a file

    @property
    def info(self) -> ScenarioInfo:
        return self.file.scenario

    @property
    def timezone(self) -> str:
        return self.info.timezone

    def time(self, ts: float) -> str:
        return format_time(ts, self.timezone)

    def node_names(self) -> list[str]:
        return [node_name(s.name, i) for s in self.file.stores for i in range(s.nodes)]

    def node_counts(self) -> dict[str, int]:
        """Each store's number of nodes."""
        return {s.name: s.nodes for s in self.file.stores}


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; raise :class:`ScenarioError` naming what to fix."""
    source = Path(path)
    data = read_toml(source, "scenario", ScenarioError)
    return scenario_from_dict(data, str(source))


def scenario_from_dict(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a parsed mapping (tests build scenarios this way)."""
    zone = (data.get("scenario") or {}).get("timezone", "UTC") \
        if isinstance(data.get("scenario"), dict) else "UTC"
    for window in data.get("windows") or []:
        if isinstance(window, dict):
            window.setdefault("timezone", zone)
    try:
        parsed = ScenarioFile.model_validate(data)
        return _check(parsed, source)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {describe_errors(exc)}") from None
    except TimeParseError as exc:
        raise ScenarioError(f"{source}: {exc}") from None
    except ValueError as exc:
        raise ScenarioError(f"{source}: {exc}") from None


def _check(parsed: ScenarioFile, source: str) -> Scenario:
    info = parsed.scenario
    start = parse_time(info.start, info.timezone)
    end = parse_time(info.end, info.timezone)
    if end <= start:
        raise ValueError("scenario.end: must be after scenario.start")
    stores = [s.name for s in parsed.stores]
    no_duplicates("store name", stores)
    no_duplicates("window name", [w.name for w in parsed.windows])
    for i, window in enumerate(parsed.windows):
        for store in window.stores or []:
            _known(f"windows[{i}].stores", "store", store, stores)
    for store in (parsed.traffic.stores or {}):
        _known("traffic.stores", "store", store, stores)
    if parsed.probes is not None:
        _check_probes(parsed.probes, parsed.stores)
    events = _events(parsed, start, end)
    return Scenario(source=source, file=parsed, start=start, end=end, events=events,
                    replay=load_replay(parsed.traffic, source))


def _check_probes(probes: ProbesSpec, specs: list[StoreSpec]) -> None:
    stores = [s.name for s in specs]
    if probes.addresses is not None and probes.users is not None:
        raise ValueError("probes: give users (a number per store) or addresses, not both")
    for store in probes.users if isinstance(probes.users, dict) else {}:
        _known("probes.users", "store", store, stores)
    domains = {d: s.name for s in specs for d in s.domains}
    for index, address in enumerate(probes.addresses or []):
        if address.rpartition("@")[2] not in domains:
            raise ValueError(f"probes.addresses[{index}]: {address!r} is in no store's "
                             f"domains ({', '.join(domains)})")
    if isinstance(probes.users, dict) and not any(probes.users.values()):
        raise ValueError("probes.users: every store has 0 probe users; give at least one")


def _known(key: str, what: str, name: str, known: list[str]) -> None:
    if name not in known:
        raise ValueError(f"{key}: unknown {what} {name!r} (known: {', '.join(known) or 'none'})")


def _events(parsed: ScenarioFile, start: float, end: float) -> tuple[Event, ...]:
    zone = parsed.scenario.timezone
    ends = {w.name: w.end_ts for w in parsed.windows}
    states = {w.name: "planned" for w in parsed.windows}
    out: list[Event] = []
    previous = start
    for i, spec in enumerate(parsed.events):
        key = f"events[{i}]"
        at = parse_time(spec.at, zone)
        if at < start or at > end:
            raise ValueError(f"{key}.at: {format_time(at, zone)} is outside the scenario "
                             f"({format_time(start, zone)} to {format_time(end, zone)})")
        if at < previous:
            raise ValueError(f"{key}.at: events must be in time order ({format_time(at, zone)} "
                             f"comes before the previous event)")
        previous = at
        nodes = _event_nodes(parsed, spec, key)
        at_end = False
        if spec.action in WINDOW_ACTIONS:
            at_end = _window_event(spec, key, at, zone, ends, states)
        if spec.action == "traffic" and spec.rate is None and spec.factor is None:
            raise ValueError(f"{key}: a traffic event needs rate or factor")
        out.append(Event(at=at, spec=spec, nodes=nodes, at_window_end=at_end))
    return tuple(out)


def _event_nodes(parsed: ScenarioFile, spec: EventSpec, key: str) -> tuple[str, ...]:
    if spec.action not in NODE_ACTIONS:
        if spec.store or spec.nodes:
            raise ValueError(f"{key}: store/nodes only apply to node.* actions")
        return ()
    counts = {s.name: s.nodes for s in parsed.stores}
    names: list[str] = []
    if spec.store is not None:
        _known(f"{key}.store", "store", spec.store, list(counts))
        names += [node_name(spec.store, n) for n in range(counts[spec.store])]
    for name in spec.nodes or []:
        try:
            find_node(name, counts)
        except NodeError as exc:
            raise ValueError(f"{key}.nodes: {exc}") from None
        names.append(name)
    if not names:
        raise ValueError(f"{key}: {spec.action} needs store = NAME or nodes = [...]")
    needs = mode_needs(NodeMode(spec.action.removeprefix("node.")), latency=spec.latency,
                       failure_rate=spec.failure_rate, fail_next=spec.fail_next)
    if needs:
        example = ' (e.g. "30s")' if "latency" in needs else ""
        raise ValueError(f"{key}: {spec.action} needs {' or '.join(needs)}{example}")
    return tuple(dict.fromkeys(names))


def _window_event(spec: EventSpec, key: str, at: float, zone: str,
                  ends: dict[str, float], states: dict[str, str]) -> bool:
    """Check a window event against the window's state at that time, as planned so far;
    whether it is an extension due at the very moment the window is planned to end (as an
    operator extends a window when its planned end comes and the work is not done)."""
    if spec.window is None:
        raise ValueError(f"{key}: {spec.action} needs window = NAME")
    name = spec.window
    if name not in ends:
        if spec.action == "window.start" and spec.until:
            ends[name] = parse_time(spec.until, zone)
            states[name] = "active"
            if ends[name] <= at:
                raise ValueError(f"{key}.until: must be after the event")
            return False
        _known(f"{key}.window", "window", name, list(ends))
    at_end = at == ends[name] and spec.action == "window.extend"
    if states[name] in ("ended", "cancelled") or (at >= ends[name] and not at_end):
        raise ValueError(f"{key}: window {name!r} has already ended at "
                         f"{format_time(ends[name], zone)}; act on it before its end (an "
                         "extension may come at the very moment it is planned to end)")
    if spec.action in ("window.extend", "window.start") and spec.until:
        until = parse_time(spec.until, zone)
        if until <= at:
            raise ValueError(f"{key}.until: {format_time(until, zone)} is not after the event")
        ends[name] = until
    elif spec.action == "window.extend":
        raise ValueError(f"{key}: window.extend needs until = TIME")
    if spec.action in ("window.end", "window.cancel"):
        states[name] = "ended" if spec.action == "window.end" else "cancelled"
        ends[name] = at
    return at_end

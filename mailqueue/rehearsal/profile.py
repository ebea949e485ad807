"""A scenario's traffic from a traffic profile: ``[traffic] profile = "FILE"``.

``profile`` takes either of two values, told apart by their type:

- a list of 24 numbers: synthetic traffic's weights by local hour (with ``rate``,
  ``size_median`` ...);
- a string: a traffic profile file (``mailqueue traffic profile``), relative to the
  scenario file, whose arrivals, sizes, recipients and domains the rehearsal replays.
  ``scale`` (``0.01`` or ``"1/100"`` keeps one message in a hundred, ``2`` sends each
  twice) and ``shift`` (``"week"``: each moment of the scenario replays the same weekday
  and time of day of the log; or a time of the log, which then plays at the scenario's
  start) apply to it; the synthetic keys do not, and naming one is an error.

This module checks those values and loads the file (:func:`load_replay`);
:mod:`~mailqueue.rehearsal.replay` plans the replay.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailqueue.errors import ProfileError, TimeParseError
from mailqueue.timeparse import format_time, parse_time
from mailqueue.traffic.profile import TrafficProfile, load_profile

if TYPE_CHECKING:
    from mailqueue.rehearsal.scenario import TrafficSpec

# The keys of synthetic traffic: a profile gives what they describe.
SYNTHETIC_KEYS = ("rate", "size_median", "size_sigma", "size_max", "recipients", "senders")
WEEK = "week"
MAX_SCALE = 1000.0
_FRACTION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*")


def profile_value(value: Any) -> Any:
    """``[traffic] profile``: 24 hourly weights (a list) or a profile file (a string)."""
    if value is None or isinstance(value, str):
        if isinstance(value, str) and not value.strip():
            raise ValueError("name a traffic profile file (made by mailqueue traffic profile)")
        return value
    if isinstance(value, list):
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise ValueError("give 24 numbers (weights by local hour)")
        return value
    raise ValueError("give 24 hourly weights (a list) or a traffic profile file (a string, "
                     f"e.g. \"profile.json\"), not {value!r}")


def scale_value(value: Any) -> Any:
    """``[traffic] scale``: a positive number, or ``"1/N"``."""
    if value is None:
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        fraction = _FRACTION.fullmatch(value)
        try:
            number = float(fraction.group(1)) / float(fraction.group(2)) if fraction \
                else float(value)
        except (ValueError, ZeroDivisionError):
            number = None
    if number is None or not math.isfinite(number) or not 0 < number <= MAX_SCALE:
        raise ValueError("give a positive number up to 1000 (0.01 or \"1/100\" keeps one "
                         f"message in a hundred, 2 sends each twice), not {value!r}")
    return number


def scale_text(scale: float) -> str:
    """``1/300`` for a sample, ``2`` for a multiple."""
    if scale < 1 and abs(1 / scale - round(1 / scale)) < 1e-6:
        return f"1/{round(1 / scale)}"
    return f"{scale:g}"


@dataclasses.dataclass(frozen=True)
class Replay:
    """A profile a scenario replays, with its scale and shift."""

    path: str
    profile: TrafficProfile
    scale: float = 1.0
    shift: float | None = None  # the log time that plays at the scenario's start; None: week

    def describe(self) -> str:
        """``profile.json at scale 1/300, week-aligned``."""
        shift = "weekday and time of day aligned" if self.shift is None else \
            f"from {format_time(self.shift, self.profile.timezone)} of the log"
        return f"{Path(self.path).name} at scale {scale_text(self.scale)}, {shift}"


def load_replay(traffic: TrafficSpec, source: str) -> Replay | None:
    """The replay ``[traffic]`` asks for (None for synthetic traffic); ValueError naming
    the key for a value that cannot be (the file is read relative to ``source``'s
    directory)."""
    if not isinstance(traffic.profile, str):
        for key in ("scale", "shift"):
            if getattr(traffic, key) is not None:
                raise ValueError(f"traffic.{key}: applies to a traffic profile (profile = "
                                 "\"FILE\"), not to synthetic traffic")
        return None
    for key in SYNTHETIC_KEYS:
        if key in traffic.model_fields_set:
            raise ValueError(f"traffic.{key}: not used with a traffic profile (profile = "
                             f"{traffic.profile!r} gives the arrivals, sizes, recipients "
                             "and senders); remove it, or use scale")
    path = Path(traffic.profile)
    if not path.is_absolute() and not source.startswith("<"):
        path = Path(source).absolute().parent / path
    try:
        profile = load_profile(path)
    except ProfileError as exc:
        raise ValueError(f"traffic.profile: {exc}") from None
    return Replay(path=str(path), profile=profile, scale=traffic.scale or 1.0,
                  shift=shift_value(traffic.shift, profile))


def shift_value(value: str | None, profile: TrafficProfile) -> float | None:
    """``"week"`` (None) or a time of the log, read in the profile's zone."""
    if value is None or value.strip().lower() == WEEK:
        return None
    try:
        return parse_time(value, profile.timezone)
    except TimeParseError:
        example = profile.span.start[:16].replace("T", " ")
        raise ValueError(f"traffic.shift: give \"week\" or the time of the log that plays "
                         f"at the scenario's start (e.g. \"{example}\", in "
                         f"{profile.timezone}), not {value!r}") from None

"""What a log line is: a Postfix or Exim line, another program's, or not a log line.

Three forms are known: syslog's (``Jun 26 17:00:01 host program[pid]: text``, also
Postfix's ``maillog_file`` with ``Jun 06``), syslog with an RFC 3339 time (rsyslog's high
precision form, ``journalctl -o short-iso``), and Exim's main log (``2019-06-26 17:00:01
[pid] text``). A syslog line is Postfix's when its program is ``postfix/DAEMON`` (any
``syslog_name`` containing ``postfix``, e.g. ``postfix-out/smtp``), Exim's when it is
``exim`` or ``exim4``, and another program's otherwise.
"""

from __future__ import annotations

import re
from typing import Literal

Kind = Literal["postfix", "exim", "other", "unknown"]
Form = Literal["syslog", "iso", "exim", ""]

_SYSLOG = re.compile(r"([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d)(?:\.\d+)? \S+ "
                     r"(?:([^\s\[\]:]+)(?:\[\d+\])?: ?(.*))?")
_ISO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?) \S+ "
                  r"(?:([^\s\[\]:]+)(?:\[\d+\])?: ?(.*))?")
_EXIM = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)?(?: ([+-]\d{4}))? "
                   r"(?:\[\d+(?::\d+)?\] )?(.*)")
_EXIM_IN_SYSLOG = re.compile(r"(?:\[\d+(?::\d+)?\] )?(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
                             r"(?:\.\d+)?(?: [+-]\d{4})? )?(?:\[\d+(?::\d+)?\] )?")

_PROGRAMS: dict[str, Kind] = {}


def program_kind(program: str) -> Kind:
    """Whose a syslog program name is: ``postfix``, ``exim`` or ``other``."""
    kind = _PROGRAMS.get(program)
    if kind is None:
        head, slash, _ = program.partition("/")
        if slash and "postfix" in head.lower():
            kind = "postfix"
        elif program.lower() in ("exim", "exim4") or program.lower().startswith("exim-"):
            kind = "exim"
        else:
            kind = "other"
        if len(_PROGRAMS) < 10_000:
            _PROGRAMS[program] = kind
    return kind


def classify(line: str) -> tuple[Kind, Form, str, str, str]:
    """``(kind, time form, time text, program, text)`` of one line (without its end).

    For Exim's main log the time text is ``date time`` plus `` +zone`` when it has one,
    and the program is ``exim``. A line in no known form is ``unknown``."""
    first = line[:1]
    if first.isalpha():
        fast = _syslog_fast(line)
        if fast is not None:
            return fast
        match = _SYSLOG.match(line)
        if match:
            return _syslog(match, "syslog")
    elif first.isdigit():
        if line[10:11] == "T":
            match = _ISO.match(line)
            if match:
                return _syslog(match, "iso")
        else:
            match = _EXIM.match(line)
            if match:
                stamp = match.group(1)
                if match.group(2):
                    stamp += " " + match.group(2)
                return "exim", "exim", stamp, "exim", match.group(3)
    return "unknown", "", "", "", line


def _syslog_fast(line: str) -> tuple[Kind, Form, str, str, str] | None:
    """The common syslog line (``Jun 26 17:00:01 host program[pid]: text``) by position,
    without a regular expression (every line of a large log comes through here); None
    for anything else (the expression decides). The time's digits are checked where it
    is read (:class:`~mailqueue.traffic.stamps.Timeline`)."""
    if line[3:4] != " " or line[6:7] != " " or line[9:10] != ":" or line[12:13] != ":" or \
            line[15:16] != " ":
        return None
    host_end = line.find(" ", 16)
    colon = line.find(": ", host_end)
    if host_end < 0 or colon < 0:
        return None
    program = line[host_end + 1:colon]
    bracket = program.find("[")
    if bracket >= 0:
        program = program[:bracket]
    if not program or " " in program:
        return None
    kind = program_kind(program)
    text = line[colon + 2:]
    if kind == "exim":
        lead = _EXIM_IN_SYSLOG.match(text)
        if lead:
            text = text[lead.end():]
    return kind, "syslog", line[:15], program, text


def _syslog(match: re.Match[str], form: Form) -> tuple[Kind, Form, str, str, str]:
    program, text = match.group(2), match.group(3)
    if program is None or text is None:
        return "other", form, match.group(1), "", ""
    kind = program_kind(program)
    if kind == "exim":
        lead = _EXIM_IN_SYSLOG.match(text)  # Exim's own pid and time, when it adds them
        if lead:
            text = text[lead.end():]
    return kind, form, match.group(1), program, text

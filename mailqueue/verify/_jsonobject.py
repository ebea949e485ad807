"""One large JSON object read a member at a time, from a text stream.

:class:`ObjectReader` reads ahead a piece at a time (``READ`` characters) and decodes each
name and value with :mod:`json` as it comes, so that an object of a million members never
has to be in memory whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, TextIO

READ = 64 * 1024
_MAX_VALUE = 1024 * 1024  # a value that long, yet not complete, is not JSON
_SPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"[-+0-9.eE]*")


class ObjectError(ValueError):
    """The text is not the JSON expected; the message names the character."""


class ObjectReader:
    """Reads ``{"name": value, ...}`` from ``stream``: :meth:`members` yields each name,
    and the caller reads its value (:meth:`value`, or :meth:`members` again for an object)
    before asking for the next."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._buf = ""
        self._pos = 0
        self._dropped = 0  # characters read and no longer in the buffer
        self._eof = False
        self._decoder = json.JSONDecoder()

    def members(self) -> Iterator[str]:
        """The names of an object's members, in order, its value read between each."""
        self._expect("{")
        if self._peek() == "}":
            self._pos += 1
            return
        while True:
            if self._peek() != '"':
                raise self._error("Expecting property name enclosed in double quotes")
            key = self.value()
            self._expect(":")
            yield key
            if self._expect(",}") == "}":
                return

    def value(self) -> Any:
        """The next value, whole."""
        self._peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if len(self._buf) - self._pos < _MAX_VALUE and self._fill():
                    continue  # it may go on in what is not read yet
                raise self._error(exc.msg, exc.pos) from None
            if self._complete(value) or not self._fill():
                self._pos = end
                return value

    def _complete(self, value: Any) -> bool:
        """Whether ``value``, decoded from the buffer, cannot go on in what is not read yet:
        a number can (``-1.`` decodes as ``-1``) unless something else follows it here."""
        if not isinstance(value, int | float) or isinstance(value, bool):
            return True
        run = _NUMBER.match(self._buf, self._pos)
        assert run is not None  # it matches the empty string
        return run.end() < len(self._buf)

    def end(self) -> None:
        """Nothing but white space is left."""
        if self._peek():
            raise self._error("Extra data")

    def _peek(self) -> str:
        """The next character after white space ("" at the end)."""
        while True:
            match = _SPACE.match(self._buf, self._pos)
            assert match is not None  # it matches the empty string
            self._pos = match.end()
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def _expect(self, chars: str) -> str:
        found = self._peek()
        if not found or found not in chars:
            raise self._error(f"Expecting {' or '.join(repr(c) for c in chars)}")
        self._pos += 1
        return found

    def _fill(self) -> bool:
        """Read on; False at the end of the stream."""
        if self._eof:
            return False
        more = self._stream.read(READ)
        if not more:
            self._eof = True
            return False
        self._dropped += self._pos
        self._buf = self._buf[self._pos:] + more
        self._pos = 0
        return True

    def _error(self, message: str, pos: int | None = None) -> ObjectError:
        where = self._dropped + (self._pos if pos is None else pos)
        return ObjectError(f"{message}: character {where}")

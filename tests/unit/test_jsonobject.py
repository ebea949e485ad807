"""A large JSON object read a member at a time gives what reading it whole gives, wherever
its pieces break off."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from mailqueue.verify import _jsonobject
from mailqueue.verify._jsonobject import ObjectError, ObjectReader

DOCUMENT = {"format": "x", "big": 12345678901234567890, "neg": -1.5e-3, "t": True, "n": None,
            "files": {f"k\u00f6{n}": {"path": f"/m/\U0001f600/{n}", "size": 10 ** n}
                      for n in range(12)},
            "empty": {}, "list": [1, [2, {"three": "\\"}], ""]}


def read(text: str) -> dict[str, Any]:
    reader = ObjectReader(io.StringIO(text))
    out: dict[str, Any] = {}
    for name in reader.members():
        if name in ("files", "empty"):
            out[name] = {key: reader.value() for key in reader.members()}
        else:
            out[name] = reader.value()
    reader.end()
    return out


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 8, 13, 4096])
@pytest.mark.parametrize("indent", [None, 1])
def test_any_piece_size_reads_the_whole_object(monkeypatch: pytest.MonkeyPatch, piece: int,
                                               indent: int | None) -> None:
    monkeypatch.setattr(_jsonobject, "READ", piece)
    text = json.dumps(DOCUMENT, indent=indent)
    assert read(text) == DOCUMENT
    assert read(" \n" + text + "\n\n") == DOCUMENT


@pytest.mark.parametrize(("text", "message"), [
    ('{"a": 1', "Expecting ',' or '}': character 7"),
    ('{"a": 1,}', "Expecting property name enclosed in double quotes: character 8"),
    ('{"a" 1}', "Expecting ':': character 5"),
    ('{"a": 1} {}', "Extra data: character 9"),
    ('{"a": tru}', "Expecting value: character 6"),
    ('[1]', "Expecting '{': character 0"),
    ('', "Expecting '{': character 0"),
])
def test_text_that_is_not_the_object_names_the_character(
        monkeypatch: pytest.MonkeyPatch, text: str, message: str) -> None:
    monkeypatch.setattr(_jsonobject, "READ", 3)
    with pytest.raises(ObjectError) as caught:
        read(text)
    assert str(caught.value) == message

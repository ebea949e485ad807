"""Environment overrides: ``MAILQUEUE_<KEY>`` sets any key a config file can set.

The variable's name is the key's path in upper case, joined by ``_``:
``MAILQUEUE_SMTP_PORT`` is ``[smtp] port``, ``MAILQUEUE_QUEUE_RETRY_INITIAL_DELAY`` is
``[queue.retry] initial_delay``, and an entry of a list of tables is named by its place in
the file, from 0: ``MAILQUEUE_STORES_0_PATH`` is the first ``[[stores]]`` entry's ``path``.
An override changes a key of an entry the file has; it cannot add an entry. The target and
its type come from the config models: a text key (a string, a path, a word from a list)
takes the value as written, any other reads it as a TOML value (``2526``, ``true``,
``["a.example"]``), or as text when it is none (``5s``, ``0-3``), so that a value is typed
as the file would type it.
"""

from __future__ import annotations

import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from mailqueue.errors import ConfigError

ENV_PREFIX = "MAILQUEUE_"
# MAILQUEUE_* variables that are not key overrides: the config path, mailqueue.faults, and
# the PostgreSQL server of mailqueue's own test suite (set beside commands the tests run).
NOT_OVERRIDES = {ENV_PREFIX + "CONFIG", ENV_PREFIX + "FAULTS", ENV_PREFIX + "TEST_PG"}

Key = tuple[str | int, ...]  # a key's place in the config: ("stores", 0, "path")


def apply_overrides(data: dict[str, Any], env: Mapping[str, str], source: Path,
                    model: type[BaseModel]) -> dict[str, Key]:
    """Apply the ``MAILQUEUE_<KEY>`` variables of ``env`` to ``data`` (a parsed ``source``
    file, validated later as ``model``); the names applied and the keys they set."""
    applied: dict[str, Key] = {}
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name in NOT_OVERRIDES:
            continue
        key, field = override_key(name, model)
        _set_key(data, key, _env_value(raw, field), name, source)
        applied[name] = key
    return applied


def override_key(name: str, model: type[BaseModel]) -> tuple[Key, FieldInfo]:
    """The key ``MAILQUEUE_...`` names, found by walking the models (names hold underscores,
    so the longest field name that fits wins), and its field; ConfigError if none does.

    A table's keys are ``MAILQUEUE_QUEUE_RETRY_INITIAL_DELAY``; an entry of ``[[stores]]``
    or ``[[windows]]`` is named by its index in the file, ``MAILQUEUE_STORES_0_PATH``."""
    rest = name[len(ENV_PREFIX):].lower()
    key: list[str | int] = []
    while True:
        step = _step(model, rest, name, key)
        if isinstance(step, FieldInfo):
            return (*key, rest), step
        model, rest, key = step


def _step(model: type[BaseModel], rest: str, name: str, key: list[str | int]
          ) -> FieldInfo | tuple[type[BaseModel], str, list[str | int]]:
    """One level of :func:`override_key`: the leaf field ``rest`` names, or the table (and
    what is left of the name) to look in next."""
    fields = model.model_fields
    for field in sorted(fields, key=len, reverse=True):
        info = fields[field]
        table, entries = _table(info.annotation), _entries(info.annotation)
        if rest == field:
            if table is None and entries is None:
                return info
            break
        if not rest.startswith(field + "_"):
            continue
        tail = rest[len(field) + 1:]
        if table is not None:
            return table, tail, [*key, field]
        if entries is not None:
            index, _, tail = tail.partition("_")
            if index.isdigit() and tail:
                return entries, tail, [*key, field, int(index)]
            break
    prefix = ENV_PREFIX + "".join(f"{part}_" for part in key).upper()
    raise ConfigError(f"{name}: unknown override ({prefix} takes {_forms(model)})")


def config_keys(model: type[BaseModel], prefix: Key = ()) -> list[Key]:
    """Every key a file validated as ``model`` can set, in the model's order; an entry of a
    list of tables as entry 0 (``("stores", 0, "path")``). Each has an override."""
    keys: list[Key] = []
    for name, info in model.model_fields.items():
        table, entries = _table(info.annotation), _entries(info.annotation)
        if table is not None:
            keys += config_keys(table, (*prefix, name))
        elif entries is not None:
            keys += config_keys(entries, (*prefix, name, 0))
        else:
            keys.append((*prefix, name))
    return keys


def _forms(model: type[BaseModel]) -> str:
    forms = []
    for field, info in model.model_fields.items():
        upper = field.upper()
        if _table(info.annotation) is not None:
            upper += "_<KEY>"
        elif _entries(info.annotation) is not None:
            upper += "_<N>_<KEY>"
        forms.append(upper)
    return ", ".join(forms)


def _unwrap(annotation: Any) -> list[Any]:
    """The types an annotation allows, Annotated and Optional taken apart."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) if arg is not type(None)
                for t in _unwrap(arg)]
    return [annotation]


def _table(annotation: Any) -> type[BaseModel] | None:
    kinds = _unwrap(annotation)
    if len(kinds) == 1 and isinstance(kinds[0], type) and issubclass(kinds[0], BaseModel):
        return kinds[0]
    return None


def _entries(annotation: Any) -> type[BaseModel] | None:
    kinds = _unwrap(annotation)
    if len(kinds) == 1 and typing.get_origin(kinds[0]) is list:
        return _table(typing.get_args(kinds[0])[0])
    return None


def _takes_text(annotation: Any) -> bool:
    """Whether a key holds text (a string, a path, a choice of words): its override is taken
    as it is written, not read as a TOML value."""
    for kind in _unwrap(annotation):
        if typing.get_origin(kind) is Literal:
            if not all(isinstance(arg, str) for arg in typing.get_args(kind)):
                return False
        elif not (isinstance(kind, type) and issubclass(kind, str | Path)):
            return False
    return True


def _env_value(raw: str, field: FieldInfo) -> Any:
    """A text key takes ``raw`` as it is; any other reads it as a TOML value would be
    (``2526``, ``true``, ``["a.example"]``), or as text (``5s``, ``0-3``) when it is none."""
    if _takes_text(field.annotation):
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_key(data: dict[str, Any], key: Key, value: Any, name: str, source: Path) -> None:
    """Put ``value`` at ``key`` in the parsed file, making the tables on the way; an entry of
    a list of tables must be in the file already."""
    target: Any = data
    for depth, part in enumerate(key[:-1]):
        where = ".".join(str(p) for p in key[:depth + 1])
        if isinstance(part, int):
            if part >= len(target):
                count = len(target)
                raise ConfigError(f"{name}: {source} has {count} [[{key[depth - 1]}]] "
                                  f"entr{'y' if count == 1 else 'ies'}; an override can change "
                                  "a key of an entry the file has (counted from 0), not add one")
            target = target[part]
        elif isinstance(key[depth + 1], int):
            target = target.setdefault(part, [])
            if not isinstance(target, list):
                raise ConfigError(f"{source}: {where} must be a list of tables ([[{part}]])")
            continue
        else:
            target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: [{where}] must be a table")
    target[key[-1]] = value

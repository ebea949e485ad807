"""MkDocs hook: the configuration reference, generated from the pydantic models.

A page containing ``<!-- config-reference -->`` gets, in its place, one table per section
of :class:`mailqueue.config.Config`: every key with its type, default and meaning (the
field's ``description``). A key without a description fails the build, so the reference
cannot fall behind the code.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mailqueue import config as cfg
from mailqueue.timeparse import format_duration

MARKER = "<!-- config-reference -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference())


def reference() -> str:
    """Every section of the config as a Markdown table."""
    out: list[str] = []
    for name, field in cfg.Config.model_fields.items():
        model, is_list = _model_of(field.annotation)
        if model is None:
            raise ValueError(f"config key {name!r} is not a table")
        out += _section(f"[[{name}]]" if is_list else f"[{name}]", field, model)
    return "\n".join(out) + "\n"


def _section(heading: str, field: FieldInfo, model: type[BaseModel]) -> list[str]:
    """A heading, the section's meaning, its table, then its sub-tables' sections."""
    out = [f"### `{heading}`", "", _described(heading, field, model), ""]
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    nested: list[tuple[str, FieldInfo, type[BaseModel]]] = []
    for name, sub_field in model.model_fields.items():
        sub, is_list = _model_of(sub_field.annotation)
        if sub is not None:
            key = f"{heading.strip('[]')}.{name}"
            nested.append((f"[[{key}]]" if is_list else f"[{key}]", sub_field, sub))
            continue
        if not sub_field.description:
            raise ValueError(f"config key {heading} {name} has no description "
                             "(Field(description=...) in mailqueue/config.py)")
        rows.append(f"| `{name}` | {_type(sub_field)} | {_default(sub_field)} | "
                    f"{' '.join(sub_field.description.split())} |")
    out += [*rows, ""]
    for sub_heading, sub_field, sub in nested:
        out += _section(sub_heading, sub_field, sub)
    return out


def _described(key: str, field: FieldInfo, model: type[BaseModel]) -> str:
    text = field.description or (model.__doc__ or "").strip().split("\n\n")[0]
    if not text:
        raise ValueError(f"config section {key} has no description")
    return " ".join(text.split())


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds (directly, optionally, or as a list of them)."""
    origin = typing.get_origin(annotation)
    if origin is list:
        inner, _ = _model_of(typing.get_args(annotation)[0])
        return inner, True
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner, is_list = _model_of(arg)
            if inner is not None:
                return inner, is_list
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _kind(field: FieldInfo) -> str | None:
    """"duration", "size", ... from the validators the field's type carries."""
    for item in field.metadata:
        func = getattr(item, "func", None)
        if func is getattr(cfg, "_duration", None):
            return "duration"
        if func is getattr(cfg, "_size", None):
            return "size"
        if func is getattr(cfg, "_cpus", None):
            return "CPU list"
    return None


def _type(field: FieldInfo) -> str:
    kind = _kind(field)
    if kind is not None:
        return kind
    return _type_name(field.annotation)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" (optional)" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}s" if args else "list"
    if origin is dict:
        return "table"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if value is PydanticUndefined:
        value = field.default_factory() if field.default_factory else None  # type: ignore[call-arg]
    if value is None:
        return "—"
    kind = _kind(field)
    if kind == "duration" and isinstance(value, int | float):
        return f"`{format_duration(value)}`" if value else "`0`"
    if kind == "size" and isinstance(value, int):
        return f"`{_size(value)}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, list):
        return "`[]`" if not value else f"`{value}`"
    return f"`{value}`"


def _size(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)

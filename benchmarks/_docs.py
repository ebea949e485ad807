"""The tables benchmarks write into docs/performance.md, each between its own pair of
marker comments (``<!-- NAME:start -->`` ... ``<!-- NAME:end -->``)."""

from __future__ import annotations

from pathlib import Path

PERFORMANCE = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def around(name: str, path: Path = PERFORMANCE) -> tuple[str, str]:
    """What stands before ``name``'s start marker in ``path`` and after its end marker;
    SystemExit naming them when they are not there (checked before minutes of measuring)."""
    start_marker, end_marker = markers(name)
    head, start, rest = path.read_text().partition(start_marker)
    _, end, tail = rest.partition(end_marker)
    if not (start and end):
        raise SystemExit(f"{path} has no {start_marker} ... {end_marker} markers")
    return head, tail


def write_table(name: str, text: str, path: Path = PERFORMANCE) -> None:
    """Replace what stands between ``name``'s markers in ``path`` with ``text``."""
    head, tail = around(name, path)
    start_marker, end_marker = markers(name)
    path.write_text(f"{head}{start_marker}\n{text}\n{end_marker}{tail}")

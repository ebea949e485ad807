"""Mailbox content that existed before a window must be intact after it.

:func:`take_snapshot` records every message file under the stores' roots with its SHA-256;
:func:`compare_snapshot` reports files that are gone or whose content changed since. A
file is known by its store, its mailbox and its Maildir base name (the part before
``:``), so a reader moving it from ``new/`` to ``cur/`` or setting flags is not a change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailqueue.errors import MailqueueError
from mailqueue.verify.scan import mailbox_files

FORMAT = "mailqueue-snapshot/1"


class SnapshotError(MailqueueError):
    """A snapshot file cannot be read or is not a mailqueue snapshot."""


@dataclasses.dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Every message file of some stores, by stable key."""

    created_at: str
    files: dict[str, FileRecord]

    def dump(self, target: Path) -> None:
        data = {"format": FORMAT, "created_at": self.created_at,
                "files": {k: dataclasses.asdict(v) for k, v in sorted(self.files.items())}}
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        tmp.replace(target)

    @classmethod
    def load(cls, source: Path) -> Manifest:
        try:
            data: Any = json.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SnapshotError(f"{source}: no such snapshot file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SnapshotError(f"{source}: cannot read snapshot: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SnapshotError(f"{source}: not a mailqueue snapshot (expected format "
                                f"{FORMAT!r}; write one with --snapshot)")
        try:
            files = {k: FileRecord(**v) for k, v in data["files"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise SnapshotError(f"{source}: damaged snapshot ({exc})") from None
        return cls(str(data.get("created_at", "")), files)


@dataclasses.dataclass(frozen=True)
class SnapshotDiff:
    """What changed since a snapshot: ``missing`` and ``changed`` fail, ``added`` does not."""

    missing: tuple[FileRecord, ...]
    changed: tuple[tuple[FileRecord, FileRecord], ...]  # (before, now)
    added: int
    checked: int

    @property
    def ok(self) -> bool:
        return not self.missing and not self.changed

    def report(self, since: str) -> str:
        lines = [f"snapshot of {since}: {self.checked} files checked, {len(self.missing)} "
                 f"missing, {len(self.changed)} changed, {self.added} new since"]
        if self.missing:
            lines.append(f"MISSING ({len(self.missing)}):")
            lines += [f"  {r.path}" for r in self.missing]
        if self.changed:
            lines.append(f"CHANGED ({len(self.changed)}):")
            lines += [f"  {before.path} (sha256 {before.sha256[:12]} -> {now.sha256[:12]}, "
                      f"{before.size} -> {now.size} bytes)" for before, now in self.changed]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "added": self.added,
                "missing": [dataclasses.asdict(r) for r in self.missing],
                "changed": [{"before": dataclasses.asdict(b), "now": dataclasses.asdict(n)}
                            for b, n in self.changed]}


def _key(store: str, root: Path, path: Path) -> str:
    mailbox = path.parent.parent.relative_to(root).as_posix()
    return f"{store}:{mailbox}/{path.name.split(':', 1)[0]}"


def _digest(path: Path) -> tuple[str, int]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def take_snapshot(stores: Mapping[str, Path]) -> Manifest:
    """Record every message file under each store's root (blocking file reads)."""
    files: dict[str, FileRecord] = {}
    for store, root in stores.items():
        for path in mailbox_files(root):
            try:
                digest, size = _digest(path)
            except FileNotFoundError:
                continue  # moved by a reader while we walked
            files[_key(store, root, path)] = FileRecord(str(path), digest, size)
    return Manifest(datetime.now(UTC).isoformat(timespec="seconds"), files)


def compare_snapshot(before: Manifest, now: Manifest) -> SnapshotDiff:
    """What of ``before`` is missing or changed in ``now``."""
    missing = tuple(r for k, r in sorted(before.files.items()) if k not in now.files)
    changed = tuple((r, now.files[k]) for k, r in sorted(before.files.items())
                    if k in now.files and now.files[k].sha256 != r.sha256)
    added = sum(1 for k in now.files if k not in before.files)
    return SnapshotDiff(missing, changed, added, len(before.files))

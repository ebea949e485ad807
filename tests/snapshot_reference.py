"""The oracle for :mod:`mailqueue.verify.snapshot`: the same snapshot and comparison with
every record in memory, in two dicts, a snapshot written as one JSON document
(``mailqueue-snapshot/1``). Its records and findings are the module's own classes
(:class:`FileRecord`, :class:`SnapshotDiff`), so both print alike. The streamed snapshot
and its comparison in a scratch file must give exactly what this gives
(tests/integration/test_snapshot_streamed.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailqueue.mailbox.maildir import unique_part
from mailqueue.verify.scan import distinct_roots, read_files, store_roots
from mailqueue.verify.snapshot import FileRecord, SnapshotDiff, SnapshotError

FORMAT = "mailqueue-snapshot/1"


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Every message file of some stores, by stable key."""

    created_at: str
    files: dict[str, FileRecord]

    def dump(self, target: Path) -> None:
        data = {"format": FORMAT, "created_at": self.created_at,
                "files": {k: dataclasses.asdict(v) for k, v in sorted(self.files.items())}}
        tmp = target.with_name(target.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
            tmp.replace(target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise SnapshotError(f"{target}: cannot write the snapshot: "
                                f"{exc.strerror or exc}") from None

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
            files = {_rekey(k): FileRecord(**v) for k, v in data["files"].items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise SnapshotError(f"{source}: damaged snapshot ({exc})") from None
        return cls(str(data.get("created_at", "")), files)


def _key(store: str, root: Path, path: Path) -> str:
    maildir = path.parent.parent.relative_to(root).as_posix()
    return f"{store}:{maildir}/{unique_part(path.name)}"


def _rekey(key: str) -> str:
    """A key as :func:`_key` makes it now, from one an earlier snapshot wrote (which kept
    the name up to ``:`` only)."""
    prefix, _, name = key.rpartition("/")
    return f"{prefix}/{unique_part(name)}"


def _mailbox(key: str) -> str:
    """``store:domain/local`` of a key: the mailbox its Maildir (or folder) belongs to."""
    store, _, rest = key.partition(":")
    maildir = rest.rpartition("/")[0]
    return f"{store}:{'/'.join(maildir.split('/')[:2])}"


def _digest(path: Path) -> tuple[str, int]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def take_snapshot(stores: Mapping[str, Path]) -> Manifest:
    """Record every message file under each store's root, each file once (blocking)."""
    files: dict[str, FileRecord] = {}
    for store, root, inner in distinct_roots(store_roots(stores)):
        for path, (digest, size) in read_files(root, _digest, inner):
            key = _key(store, root, path)
            if key in files:  # one unique part twice in a Maildir: keep both apart
                key = f"{store}:{path.parent.parent.relative_to(root).as_posix()}/{path.name}"
            files[key] = FileRecord(str(path), digest, size)
    return Manifest(datetime.now(UTC).isoformat(timespec="seconds"), files)


def compare_snapshot(before: Manifest, now: Manifest) -> SnapshotDiff:
    """What of ``before`` is missing, changed or moved in ``now``."""
    gone = {k: r for k, r in sorted(before.files.items()) if k not in now.files}
    new = {k: r for k, r in now.files.items() if k not in before.files}
    # A file whose name is gone, found by content among the new ones of its mailbox.
    unclaimed: dict[tuple[str, str], list[str]] = {}
    for key, record in sorted(new.items()):
        unclaimed.setdefault((_mailbox(key), record.sha256), []).append(key)
    missing, moved = [], []
    for key, record in gone.items():
        candidates = unclaimed.get((_mailbox(key), record.sha256))
        if candidates:
            moved.append((record, new.pop(candidates.pop(0))))
        else:
            missing.append(record)
    changed = tuple((r, now.files[k]) for k, r in sorted(before.files.items())
                    if k in now.files and now.files[k].sha256 != r.sha256)
    return SnapshotDiff(tuple(missing), changed, len(new), len(before.files), tuple(moved))

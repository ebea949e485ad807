"""Whether a store's directory could ever hold Maildirs, decided before the server starts.

Some trouble heals while mail waits (permission denied, a read-only or full filesystem, an
unmounted disk): the server starts, says so, and retries. Other trouble never heals: a file
where the directory must be, a file among the path's parents, a pseudo filesystem such as
``/proc`` or ``/sys``. A server started there would answer 250 and defer that store's mail
until it expires, so it does not start. Blocking: run it in a thread from the event loop.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

# Kernel filesystems that show the system's state; none of them keeps a file written to it.
PSEUDO_FILESYSTEMS = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs", "proc", "pstore", "rpc_pipefs",
    "securityfs", "selinuxfs", "sysfs", "tracefs",
})
MOUNTS = Path("/proc/self/mounts")


def never_holds_maildirs(root: Path) -> str | None:
    """Why no Maildir can ever be made under ``root``, naming the path at fault; None when
    one can, or when the trouble may heal (the server then warns and retries)."""
    path = Path(os.path.abspath(root))
    found = path
    while True:
        try:
            info = os.stat(found)
            break
        except (FileNotFoundError, NotADirectoryError):
            if found.parent == found:
                return None
            found = found.parent
        except OSError:
            return None  # permission denied and the like: may heal
    if not stat.S_ISDIR(info.st_mode):
        if found == path:
            return f"{path} is a file, not a directory"
        return f"{found} is a file, so {path} cannot be a directory"
    kind = filesystem_type(found)
    if kind in PSEUDO_FILESYSTEMS:
        return f"{path} is on a {kind} pseudo filesystem, which keeps no files"
    return None


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem ``path`` is on (``ext4``, ``proc``), as the mount table
    says; None where the table cannot be read."""
    try:
        table = MOUNTS.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    real = os.path.realpath(path)
    best, kind = "", None
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # a later mount on the same point wins
            best, kind = point, fields[2]
    return kind


def _unescape(field: str) -> str:
    """A mount table field with its octal escapes (``\\040`` for a space) undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)

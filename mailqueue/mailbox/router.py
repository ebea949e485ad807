"""Which store an address belongs to, as the front end checks it in RCPT."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from enum import StrEnum

from mailqueue.config import StoreConfig


class RouteError(StrEnum):
    UNKNOWN_DOMAIN = "unknown domain"
    UNKNOWN_MAILBOX = "unknown mailbox"
    BAD_ADDRESS = "bad address"


@dataclasses.dataclass(frozen=True)
class Route:
    store: str
    local_part: str
    domain: str

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain}"


class Router:
    """Maps ``local@domain`` to a configured store (domains are case-insensitive)."""

    def __init__(self, stores: Sequence[StoreConfig]) -> None:
        self._by_domain = {d: s for s in stores for d in s.domains}

    def route(self, address: str) -> Route | RouteError:
        local, sep, domain = address.rpartition("@")
        if not sep or not local or not domain or not split_ok(local):
            return RouteError.BAD_ADDRESS
        domain = domain.lower().rstrip(".")
        store = self._by_domain.get(domain)
        if store is None:
            return RouteError.UNKNOWN_DOMAIN
        local_key = local.lower()
        if store.mailboxes is not None and local_key not in store.mailboxes:
            return RouteError.UNKNOWN_MAILBOX
        return Route(store=store.name, local_part=local_key, domain=domain)


def split_ok(local: str) -> bool:
    """A local part safe to use as a directory name."""
    return (len(local) <= 64 and "/" not in local and "\\" not in local and
            not local.startswith(".") and ".." not in local and local.isprintable() and
            "\x00" not in local)

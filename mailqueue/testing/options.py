"""What a test can choose about its mailqueue, turned into a :class:`~mailqueue.config.Config`.

Everything has a default that suits a test: one store ``mail`` serving ``example.com``,
any local part accepted, SMTP on a free port of 127.0.0.1, the queue in a SQLite file and
the Maildirs under the test's temporary directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailqueue.config import Config

DEFAULT_DOMAINS = ("example.com",)
DEFAULT_STORE = "mail"
SOURCE = "mailqueue test options"  # what an error names as the source of a bad value


@dataclasses.dataclass(frozen=True)
class MailqueueOptions:
    """Settings for one test's mailqueue (the ``mailqueue`` marker takes the same names).

    - ``stores``: store name → its domains, e.g. ``{"basic": ["basic.example"],
      "exchange": ["exchange.example"]}``; when absent, one store ``mail`` serving
      ``domains``.
    - ``domains``: the domains of the single default store.
    - ``mailboxes``: store name → the local parts that exist (others get 550 5.1.1).
    - ``inbound``: the policy of windows opened by ``start_window()`` without one:
      ``"queue"`` (accept and hold), ``"tempfail"`` (451) or ``"reject"`` (554).
    - ``max_message_size``, ``max_recipients``, ``max_messages``: front-end limits
      (sizes take ``"512KiB"`` or a number of bytes).
    - ``nodes``: store name → how many mailbox nodes it is sharded over (the store's
      ``nodes`` key), e.g. ``{"basic": 3}`` (nodes ``basic-1`` … ``basic-3``; a store not
      named has one node, ``STORE-1``); a test takes one down with ``node_down(store, n)``
      and brings it back with ``node_up(store, n)``.
    - ``passwords``: address → password of the users who may log in over IMAP and POP3
      (``imap()``, ``pop3()``); any password logs any address in when absent.
    - ``config``: any further settings, as the TOML sections would hold them, e.g.
      ``{"queue": {"max_lifetime": "2d"}, "delivery": {"concurrency": 1}}``.
    """

    stores: Mapping[str, Sequence[str]] | None = None
    domains: Sequence[str] = DEFAULT_DOMAINS
    mailboxes: Mapping[str, Sequence[str]] | None = None
    inbound: str = "queue"
    max_message_size: int | str = "10MiB"
    max_recipients: int = 100
    max_messages: int = 1_000_000
    hostname: str = "mailqueue.test"
    nodes: Mapping[str, int] | None = None
    passwords: Mapping[str, str] | None = None
    config: Mapping[str, Any] | None = None

    @classmethod
    def merged(cls, layers: Sequence[Mapping[str, Any]]) -> MailqueueOptions:
        """Options from keyword layers, later ones winning; unknown names are a TypeError."""
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for layer in layers:
            unknown = sorted(set(layer) - known)
            if unknown:
                raise TypeError(f"unknown mailqueue option(s) {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(known))})")
            values.update(layer)
        return cls(**values)

    def store_domains(self) -> dict[str, list[str]]:
        if self.stores is None:
            return {DEFAULT_STORE: list(self.domains)}
        return {name: list(domains) for name, domains in self.stores.items()}

    def build(self, root: Path, *, maildirs: Path | None = None,
              owner: str | None = None) -> Config:
        """A complete config with its queue file under ``root`` and its stores' Maildirs
        under ``maildirs`` (``root/mail`` by default), given to ``owner`` (a store's
        ``owner`` key: ``"5000"``, ``"vmail"``) when set."""
        from mailqueue.config import config_from_dict

        mailboxes = dict(self.mailboxes or {})
        under = maildirs or root / "mail"
        stores = [{"name": name, "path": str(under / name), "domains": domains,
                   **({"mailboxes": list(mailboxes[name])} if name in mailboxes else {}),
                   **({"owner": owner} if owner is not None else {})}
                  for name, domains in self.store_domains().items()]
        data: dict[str, Any] = {
            "smtp": {"host": "127.0.0.1", "port": 0, "hostname": self.hostname,
                     "max_message_size": self.max_message_size,
                     "max_recipients": self.max_recipients, "shutdown_grace": 2,
                     "timeout": 60},
            "queue": {"url": f"sqlite+aiosqlite:///{root / 'queue.db'}",
                      "max_messages": self.max_messages,
                      "retry": {"initial_delay": 60, "jitter": 0}},
            "delivery": {"poll_interval": 0.1, "concurrency": 2},
            "stores": stores,
        }
        for section, values in (self.config or {}).items():
            if isinstance(values, Mapping) and isinstance(data.get(section), dict):
                data[section] = {**data[section], **values}
            else:
                data[section] = values
        return with_nodes(config_from_dict(data, SOURCE), self.nodes)


def with_nodes(config: Config, nodes: Mapping[str, int] | None) -> Config:
    """``config`` with each store named in ``nodes`` on that many nodes (its ``nodes``
    key), validated again by the config model. Raises :class:`ConfigError` naming an
    unknown store, or a count the model refuses."""
    from pydantic import ValidationError

    from mailqueue.config import StoreConfig, describe_errors
    from mailqueue.errors import ConfigError

    if not nodes:
        return config
    known = [s.name for s in config.stores]
    for name in nodes:
        if name not in known:
            raise ConfigError(f"{SOURCE}: nodes: unknown store {name!r} "
                              f"(known: {', '.join(known)})")
    stores = []
    for store in config.stores:
        if store.name in nodes:
            try:
                store = StoreConfig.model_validate({**store.model_dump(),
                                                    "nodes": nodes[store.name]})
            except ValidationError as exc:
                problem = describe_errors(exc).removeprefix("nodes: ")
                raise ConfigError(f"{SOURCE}: nodes: store {store.name!r}: {problem}") \
                    from None
        stores.append(store)
    return config.model_copy(update={"stores": stores})

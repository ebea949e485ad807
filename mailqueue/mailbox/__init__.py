"""Mailbox stores: where delivered mail lands."""

from mailqueue.mailbox.base import DeliveryOutcome, MailboxStore
from mailqueue.mailbox.maildir import MaildirStore
from mailqueue.mailbox.router import Route, RouteError, Router

__all__ = ["DeliveryOutcome", "MailboxStore", "MaildirStore", "Route", "RouteError", "Router"]

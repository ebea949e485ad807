"""Draining the queue into mailbox stores."""

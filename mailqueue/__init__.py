"""mailqueue: accept mail during a maintenance window, queue it durably, deliver it after."""

__version__ = "0.1.0"

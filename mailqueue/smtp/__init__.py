"""The SMTP front end: aiosmtpd with admission, recipient, window and capacity policy.

- :mod:`~mailqueue.smtp.server`: the protocol (a session, its replies and timeouts) and
  :func:`~mailqueue.smtp.server.start_server`.
- :mod:`~mailqueue.smtp.handler`: the policy hooks (MAIL, RCPT, DATA) and the commit that
  earns a 250.
- :mod:`~mailqueue.smtp.admission`: connection limits and the queue's capacity.
"""

from mailqueue.smtp.admission import Capacity, Gate
from mailqueue.smtp.handler import MailqueueHandler
from mailqueue.smtp.server import IDENT, MailqueueSMTP, rewrite_reply, start_server

__all__ = ["IDENT", "Capacity", "Gate", "MailqueueHandler", "MailqueueSMTP", "rewrite_reply",
           "start_server"]

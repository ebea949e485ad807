"""What the operator steers: maintenance windows, mailbox nodes, and the control plane that
keeps every process's view of them current.

- :mod:`~mailqueue.control.windows`: a window's schedule, its states, and which stores it
  holds.
- :mod:`~mailqueue.control.nodes`: the node model (a store's nodes, their modes, the faults
  a mode injects).
- :mod:`~mailqueue.control.plane`: the running server's view, reread from the queue
  database and advanced by the clock.
"""

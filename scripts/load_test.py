#!/usr/bin/env python3
"""Load test for mailqueue: ``python scripts/load_test.py --help``; the code is
:mod:`mailqueue.loadtest`."""

from mailqueue.loadtest import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Rehearsals: replay an upgrade window with scenario files, a scaled clock and real SMTP."""

"""Fault points: parsing MAILQUEUE_FAULTS, firing on the n-th hit, a clear error when bad."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mailqueue import faults


def test_parse_entries() -> None:
    assert faults.parse("") == {}
    assert faults.parse("commit.after:kill@3, commit.before:raise") == {
        "commit.after": ("kill", 3), "commit.before": ("raise", 1)}


@pytest.mark.parametrize("spec", ["commit.after", "x:explode", "x:kill@two", ":kill"])
def test_bad_entries_are_rejected(spec: str) -> None:
    with pytest.raises(faults.FaultSpecError, match="MAILQUEUE_FAULTS"):
        faults.parse(spec)


def test_raise_fires_on_the_nth_hit_only() -> None:
    faults.arm("p:raise@2")
    try:
        faults.hit("p")
        faults.hit("other")
        with pytest.raises(faults.FaultInjected, match="fault injected at p"):
            faults.hit("p")
        faults.hit("p")
    finally:
        faults.arm("")


def test_unarmed_points_do_nothing() -> None:
    faults.arm("")
    for _ in range(1000):
        faults.hit("commit.after")


def test_serve_with_a_bad_spec_prints_one_line() -> None:
    env = {**os.environ, "MAILQUEUE_FAULTS": "commit.after:explode"}
    result = subprocess.run([sys.executable, "-m", "mailqueue", "serve", "-c", "nonexistent"],
                            capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "MAILQUEUE_FAULTS" in result.stderr and "Traceback" not in result.stderr

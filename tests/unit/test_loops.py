from __future__ import annotations

import asyncio

import pytest

from mailqueue import loops


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_loop_can_be_forced() -> None:
    assert loops.loop_name("asyncio") == "asyncio"
    assert loops.run(_loop_module(), "asyncio").startswith("asyncio")


def test_auto_uses_uvloop_when_installed() -> None:
    expected = "uvloop" if loops.uvloop_available() else "asyncio"
    assert loops.loop_name("auto") == expected
    assert loops.run(_loop_module(), "auto").startswith(expected)


def test_missing_uvloop_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loops, "uvloop_available", lambda: False)
    coro = _loop_module()
    with pytest.raises(RuntimeError, match="fast"):
        loops.run(coro, "uvloop")

"""Which event loop a service runs on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from services.runtime import loop
from services.runtime.config import ConfigError


async def _kind() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_a_service_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loop.ENV, raising=False)
    assert loop.loop_factory() is uvloop.new_event_loop
    assert loop.run(_kind()) == "uvloop"


def test_asyncio_s_own_loop_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loop.ENV, "asyncio")
    assert loop.loop_factory() is None
    assert loop.run(_kind()) == "asyncio"


def test_another_loop_is_refused_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loop.ENV, "trio")
    with pytest.raises(ConfigError, match="AAA_EVENT_LOOP must be uvloop or asyncio"):
        loop.loop_factory()

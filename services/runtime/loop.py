"""The event loop a service runs on: uvloop where it is installed, asyncio's own otherwise.

uvloop (libuv under asyncio's interface) takes about a third off the loop's
own cost per message and per datagram, which is most of what the agent's
proxy spends beside its packet work (bench/README.md, ``proxy.py``).
``AAA_EVENT_LOOP=asyncio`` runs a service on asyncio's loop instead, to
compare the two or to rule the loop out while debugging.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from services.runtime.config import ConfigError

T = TypeVar("T")

ENV = "AAA_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop, unless ``AAA_EVENT_LOOP`` says ``asyncio`` or uvloop is missing
    (None: asyncio's default)."""
    choice = os.environ.get(ENV, "uvloop")
    if choice not in ("uvloop", "asyncio"):
        raise ConfigError(f"{ENV} must be uvloop or asyncio, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to the end on a new loop of :func:`loop_factory`'s kind."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)

"""Datagrams a test receives on a local UDP socket, put on a queue as they arrive."""

from __future__ import annotations

import asyncio
import time
from typing import Any


class Collect(asyncio.DatagramProtocol):
    """Puts every datagram received (with its arrival time) on a queue."""

    def __init__(self, queue: asyncio.Queue[Any], stamp: bool = False) -> None:
        self.queue = queue
        self.stamp = stamp

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.queue.put_nowait((time.monotonic(), data) if self.stamp else data)

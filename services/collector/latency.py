"""Synthetic Access-Requests to one server, and what their latency says (the ``latency`` part).

A :class:`LatencyWindow` is plain data: probes go in as they are sent and
answered, a :class:`LatencySummary` comes out for any time. A probe is
*decided* when its answer came within the objective (fast), or when the
objective passed without one (slow: it is known to be slow then, whether an
answer comes later or not); a slow probe with no answer by the timeout has
*failed*. The summary counts the probes decided in the window before
``now``, so a slowdown shows one objective after it began, and a slowdown of
a share of requests shows as that share of the probes.

:class:`Prober` sends the probes: ``per_interval`` of them in each collector
interval, evenly spread in time, each as its own task on one UDP socket,
cycling over the configured users and NAS identifiers, with no
retransmission (a retransmission would hide the latency being measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field

from services.radius.client import RadiusClient, RadiusTimeout
from services.radius.packet import ACCESS_ACCEPT, access_request
from services.runtime.config import LatencyProbe
from services.runtime.quantiles import percentile

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Probe:
    """One synthetic request: when it went, when (if ever) its answer came."""

    sent_at: float
    answered_at: float | None = None
    failed_at: float | None = None
    detail: str = ""

    def latency(self) -> float | None:
        return None if self.answered_at is None else self.answered_at - self.sent_at


@dataclass(frozen=True)
class LatencySummary:
    """The probes decided in one window: how many, how many slow or failed, percentiles.

    Percentiles are of the latencies of the decided probes answered so far
    (a slow probe still unanswered is not in them); ``errors`` names what
    went wrong with probes (a reject, a send error), at most a few.
    """

    count: int = 0
    slow: int = 0
    failed: int = 0
    p50_s: float | None = None
    p90_s: float | None = None
    max_s: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def slow_share(self) -> float | None:
        return None if self.count == 0 else self.slow / self.count


class LatencyWindow:
    """The recent probes of one server, decided against ``objective_s`` (pure, no clock)."""

    def __init__(self, objective_s: float, window_s: float) -> None:
        self.objective_s = objective_s
        self.window_s = window_s
        self._probes: deque[Probe] = deque()

    def __len__(self) -> int:
        """How many probes it keeps."""
        return len(self._probes)

    def sent(self, at: float) -> Probe:
        """A probe went out at ``at``; settle it with :meth:`answered` or :meth:`failed`."""
        probe = Probe(at)
        self._probes.append(probe)
        return probe

    @staticmethod
    def answered(probe: Probe, at: float) -> None:
        probe.answered_at = at

    @staticmethod
    def failed(probe: Probe, at: float, detail: str = "") -> None:
        probe.failed_at = at
        probe.detail = detail

    def decided_at(self, probe: Probe) -> float | None:
        """When ``probe`` was known to be fast or slow, or None if it is not yet."""
        due = probe.sent_at + self.objective_s
        if probe.answered_at is not None and probe.answered_at <= due:
            return probe.answered_at
        if probe.failed_at is not None and probe.failed_at < due:
            return probe.failed_at
        return due

    def summary(self, now: float) -> LatencySummary:
        """The probes decided in (``now`` - window, ``now``]; ``now`` never goes back.

        A probe is decided by ``objective_s`` after it was sent at the latest, so one
        sent before ``now`` - window - objective can count in no window from now on
        and is forgotten (at 200 probes a second, the window keeps a few hundred)."""
        horizon = now - self.window_s - self.objective_s
        while self._probes and self._probes[0].sent_at < horizon:
            self._probes.popleft()
        since = now - self.window_s
        count = slow = failed = 0
        latencies: list[float] = []
        errors: list[str] = []
        for probe in self._probes:
            decided = self.decided_at(probe)
            if decided is None or decided > now or decided <= since:
                continue
            count += 1
            latency = probe.latency()
            if latency is not None and probe.answered_at is not None and probe.answered_at <= now:
                latencies.append(latency)
                if latency > self.objective_s:
                    slow += 1
            else:
                slow += 1
                if probe.failed_at is not None and probe.failed_at <= now:
                    failed += 1
                    if probe.detail and probe.detail not in errors and len(errors) < 3:
                        errors.append(probe.detail)
        latencies.sort()
        return LatencySummary(
            count=count,
            slow=slow,
            failed=failed,
            p50_s=percentile(latencies, 0.5) if latencies else None,
            p90_s=percentile(latencies, 0.9) if latencies else None,
            max_s=latencies[-1] if latencies else None,
            errors=errors,
        )


@dataclass(frozen=True)
class Credentials:
    """What one probe logs in as."""

    user: str
    password: str
    nas_identifier: str


class Prober:
    """Sends one server's probes and keeps their :class:`LatencyWindow`."""

    def __init__(
        self,
        address: tuple[str, int],
        settings: LatencyProbe,
        secret: bytes,
        passwords: list[str],
        *,
        interval_s: float,
    ) -> None:
        self.address = address
        self.settings = settings
        self.secret = secret
        self.interval_s = interval_s
        self.window = LatencyWindow(settings.objective_s, settings.window_s or interval_s)
        users = zip(settings.users, passwords, strict=True)
        pairs = itertools.product(users, settings.nas_identifiers)
        self._credentials = itertools.cycle(
            [Credentials(user.name, password, nas) for (user, password), nas in pairs]
        )
        self._client: RadiusClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.rejected: set[str] = set()

    def summary(self) -> LatencySummary:
        return self.window.summary(asyncio.get_running_loop().time())

    async def run(self, stopping: asyncio.Event) -> None:
        """Send probes, evenly spread, until ``stopping`` is set; then close."""
        loop = asyncio.get_running_loop()
        gap = self.interval_s / self.settings.per_interval
        next_at = loop.time()
        try:
            while not stopping.is_set():
                self._spawn()
                next_at += gap
                now = loop.time()
                if next_at < now:
                    next_at = now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), next_at - now)
        finally:
            await self.close()

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self._probe(next(self._credentials)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, credentials: Credentials) -> None:
        loop = asyncio.get_running_loop()
        probe = self.window.sent(loop.time())
        self.sent += 1
        try:
            if self._client is None:
                self._client = await RadiusClient.open(
                    self.address, self.secret, bind_ip=self.settings.source_ip
                )
            request = access_request(
                self.secret,
                credentials.user,
                credentials.password,
                NAS_Identifier=credentials.nas_identifier,
            )
            reply = await self._client.send(request, timeout_s=self.settings.timeout_s)
        except RadiusTimeout:
            self.window.failed(
                probe, loop.time(), f"no answer within the {self.settings.timeout_s:g}s timeout"
            )
            return
        except (OSError, RuntimeError) as exc:
            self.window.failed(probe, loop.time(), f"cannot send: {exc}")
            return
        self.window.answered(probe, loop.time())
        if reply.code != ACCESS_ACCEPT and credentials.user not in self.rejected:
            self.rejected.add(credentials.user)
            logger.warning(
                "probe user %s was rejected by %s:%d (its latency still counts): "
                "check its password",
                credentials.user,
                *self.address,
            )

    async def close(self) -> None:
        """Cancel the probes in flight and close the socket."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            self._client.close()
            self._client = None

"""The life of a service: connect, set up, run until told to stop, shut down.

Shutdown has one order: stop taking new work (drain subscriptions), let the
background loops finish under a grace timeout (then cancel them), and close
the connection. Resources live in an AsyncExitStack, loops in a TaskGroup.

Sleeping costs O(1) per sleep, whatever the number of sleepers: a service
with thousands of loops (the agent, one set per client) sleeps on
:func:`doze`, each sleep a future of its own with a timer, registered in the
set of each :class:`WakeEvent` it waits on, which ``set()`` resolves all at
once. (An ``asyncio.Event`` keeps its waiters in a deque: a wait ended by its
timeout removes itself from it in O(n).)

Readiness is a signal, as uvicorn's ``Server.started``: a task run in the
context of :func:`signalling_started` sets the given event once its service
has started, every subscription in place. A parent that has only a service
process's output reads the line logged at that moment (:func:`says_started`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from typing import Any

from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config
from services.runtime.lease import Lease, LeaseLost, holder_name, role
from services.runtime.metrics import ServiceMetrics
from services.runtime.permissions import leased, uses_stream

logger = logging.getLogger(__name__)

ShutdownTrigger = Callable[[], Awaitable[Any]]

_started: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "started", default=None
)


def signalling_started(event: asyncio.Event) -> contextvars.Context:
    """A copy of the current context in which :func:`run_service` sets ``event`` once the
    service has started: ``asyncio.create_task(run(...), context=signalling_started(e))``."""
    context = contextvars.copy_context()
    context.run(_started.set, event)
    return context


def says_started(line: str) -> bool:
    """Whether ``line``, of a service process's log, is the one :func:`run_service` writes
    once the service has started."""
    return __name__ in line and " started" in line


class WakeEvent(asyncio.Event):
    """An ``asyncio.Event`` that :func:`doze` waits on in O(1): each sleep puts a future of
    its own in this event's set of sleepers, and :meth:`set` resolves them all."""

    def __init__(self) -> None:
        super().__init__()
        self._sleepers: set[asyncio.Future[None]] = set()

    def set(self) -> None:
        super().set()
        sleepers, self._sleepers = self._sleepers, set()
        for sleeper in sleepers:
            _resolve(sleeper)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def doze(seconds: float | None, *events: asyncio.Event) -> None:
    """Return once ``seconds`` have passed (never, with None) or one of ``events`` is set,
    whichever comes first; always after yielding to the loop at least once.

    The sleep is one future with a timer. Each :class:`WakeEvent` of ``events`` holds
    that future in its set of sleepers (O(1) in and out); any other event is waited on
    by a task of its own, cancelled when the sleep ends."""
    if any(event.is_set() for event in events):
        await asyncio.sleep(0)
        return
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()
    timer = None if seconds is None else loop.call_later(max(seconds, 0.0), _resolve, woken)
    watchers: list[asyncio.Task[Any]] = []
    for event in events:
        if isinstance(event, WakeEvent):
            event._sleepers.add(woken)
        else:
            watcher = loop.create_task(event.wait())
            watcher.add_done_callback(lambda _: _resolve(woken))
            watchers.append(watcher)
    try:
        await woken
    finally:
        if timer is not None:
            timer.cancel()
        for event in events:
            if isinstance(event, WakeEvent):
                event._sleepers.discard(woken)
        for watcher in watchers:
            watcher.cancel()
        if watchers:
            await asyncio.gather(*watchers, return_exceptions=True)


class ShutdownSignals:
    """SIGINT and SIGTERM set an event, from the moment the context is entered."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._signals = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> ShutdownSignals:
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.add_signal_handler(sig, self.event.set)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)


async def wait_for_shutdown(trigger: ShutdownTrigger | None) -> None:
    """Return when ``trigger`` returns or, without one, on SIGINT or SIGTERM."""
    if trigger is not None:
        await trigger()
        return
    with ShutdownSignals() as signals:
        await signals.event.wait()


class Runtime:
    """What a service's set-up gets: its bus, its exit stack, its metrics and its loops.

    ``metrics.registry`` is this service's own Prometheus registry; services
    add their metrics to it whether or not it is served.
    """

    def __init__(
        self,
        name: str,
        config: Config,
        bus: Bus,
        stack: AsyncExitStack,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.bus = bus
        self.stack = stack
        self.metrics = metrics or ServiceMetrics(name)
        self.stopping = WakeEvent()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a background loop of this service until it stops."""
        assert self._tg is not None, "spawn only during set-up or while running"
        task = self._tg.create_task(coro, name=f"{self.name}:{name}")
        self._tasks.append(task)
        return task

    async def sleep(self, seconds: float) -> bool:
        """Sleep; return False at once if the service is stopping."""
        if self.stopping.is_set():
            return False
        await doze(seconds, self.stopping)
        return not self.stopping.is_set()

    async def nap(self, seconds: float, wake: asyncio.Event) -> bool:
        """Wait up to ``seconds`` or until ``wake`` is set; False if the service is stopping.

        ``wake`` is best a :class:`WakeEvent` (no task per nap, see :func:`doze`)."""
        await doze(seconds, self.stopping, wake)
        return not self.stopping.is_set()

    async def _stop_loops(self, grace_s: float) -> None:
        self.stopping.set()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace_s)
            for task in still:
                task.cancel()


SetUp = Callable[[Runtime], Awaitable[None]]


async def _first(work: Awaitable[None], stopped: asyncio.Future[Any]) -> bool:
    """Run ``work`` until it returns (True) or ``stopped`` is done first (False)."""
    task = asyncio.ensure_future(work)
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def run_service(
    name: str,
    config: Config,
    setup: SetUp,
    *,
    shutdown_trigger: ShutdownTrigger | None = None,
    bus_url: str | None = None,
    keyring: Keyring | None = None,
    grace_s: float = 5.0,
    only: Sequence[str] | None = None,
) -> None:
    """Connect ``name`` to the bus, run ``setup``, and serve until shutdown.

    A service of which exactly one replica acts (services/runtime/permissions.py,
    ``leased``) first waits, as a standby, until it holds the lease of its role
    (``name``, with the servers of ``only``: services/runtime/lease.py), keeps it
    while it runs (stopping with :class:`~services.runtime.lease.LeaseLost` if it
    loses it) and gives it up when it stops.

    With a port for ``name`` in ``config.metrics`` (see
    :meth:`Config.with_metrics_port`), /metrics is served from set-up until
    the subscriptions are drained and the loops have stopped.
    """
    keyring = keyring or Keyring.from_config(config, service=name)
    async with AsyncExitStack() as stack:
        if shutdown_trigger is None:
            # Installed before anything else, so a SIGTERM that comes while the
            # service is still setting up stops it cleanly too.
            shutdown_trigger = stack.enter_context(ShutdownSignals()).event.wait
        bus = await Bus.connect(config.bus, keyring, name=name, stack=stack, url=bus_url)
        if uses_stream(name):
            # the services that keep state make sure the stream exists; the others
            # (the agent, the reference servers) have no JetStream API at all
            await bus.ensure_stream(
                max_age_s=config.bus.stream_max_age_s, max_bytes=config.bus.stream_max_bytes
            )
        metrics = ServiceMetrics(name)
        metrics.watch_bus(bus.counters)
        port = config.metrics.port(name)
        if port is not None:
            metrics.serve(config.metrics.listen, port)
            stack.push_async_callback(metrics.stop)
        runtime = Runtime(name, config, bus, stack, metrics)
        stopped = asyncio.ensure_future(shutdown_trigger())
        stack.callback(stopped.cancel)
        lease = None
        if leased(name):
            lease = Lease(
                await bus.lease_bucket(config.bus.lease_s),
                role(name, only),
                holder_name(),
                config.bus.lease_s,
            )
            if not await _first(lease.take(), stopped):
                logger.info("%s stopped before it held its lease", name)
                return
            stack.push_async_callback(lease.release)
        try:
            await _serve(runtime, setup, stopped, lease, grace_s)
        except* LeaseLost as lost:
            # one line, not a task group's traceback: the supervisor starts it again
            raise lost.exceptions[0] from None
        logger.info("%s stopped: %s", name, bus.stats())


async def _serve(
    runtime: Runtime,
    setup: SetUp,
    stopped: asyncio.Future[Any],
    lease: Lease | None,
    grace_s: float,
) -> None:
    """Set the service up, run it until ``stopped``, then stop it in order."""
    name, bus = runtime.name, runtime.bus
    async with asyncio.TaskGroup() as tg:
        runtime._tg = tg
        if lease is not None:
            keeping = tg.create_task(lease.keep(), name=f"{name}:lease")
        # told to stop while setting up (loading state, JetStream settling after a
        # takeover), it stops then, as a crash there would: setting up resumes at the
        # next start
        if await _first(setup(runtime), stopped):
            # The server has every subscription once this round trip is back:
            # from here on, nothing published to this service is missed.
            await bus.nc.flush()
            logger.info("%s started", name)
            started = _started.get()
            if started is not None:
                started.set()
            await stopped
        else:
            logger.info("%s told to stop while setting up", name)
        logger.info("%s stopping", name)
        await bus.stop_receiving()
        await runtime._stop_loops(grace_s)
        if lease is not None:
            keeping.cancel()

"""Every service of aaa-failover, written once.

Each :class:`Service` says its name (`aaa-failover run <name>`,
`python -m services.<name>`), its entry point (``run`` of
``services.<name>.service``), whether it may run in a replay sandbox (it
re-derives decisions from replayed events; the others touch real servers and
clients), what its replicas split the farm by (``--only`` names servers or
clients; None: one process serves the whole farm) and when it starts.

:func:`plan` is the processes a config needs, in start order, as
`aaa-failover up` runs them; :func:`run_argv` the command line of one.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Collection, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, cast

from services.runtime.permissions import USES, BusUse

if TYPE_CHECKING:
    from services.runtime.config import Config
    from services.runtime.lifecycle import ShutdownTrigger

Split = Literal["servers", "clients"]


class Entry(Protocol):
    """A service's ``run``: serve ``config`` until shutdown."""

    def __call__(
        self,
        config: Config,
        *,
        shutdown_trigger: ShutdownTrigger | None = ...,
        bus_url: str | None = ...,
        only: list[str] | None = ...,
    ) -> Coroutine[Any, Any, None]: ...


@dataclass(frozen=True)
class Service:
    """One service and how it is launched.

    ``starts``: its rank in start order. The reference servers come first (the
    collector reads them), then the deciding services, subscribed before the
    collector publishes its first sample, then the collector, the agents last.
    ``up_per_server``: `aaa-failover up` runs one process per reference server
    (``--only ID``) instead of one for the whole farm.
    """

    name: str
    sandbox: bool
    split: Split | None
    starts: int
    up_per_server: bool = False

    @property
    def bus(self) -> BusUse:
        """What it publishes, subscribes to and keeps on the bus: its NATS user's
        permissions derive from it (services/runtime/permissions.py)."""
        return USES[self.name]

    @property
    def module(self) -> str:
        """The module whose ``run`` is the service's entry point."""
        return f"services.{self.name}.service"

    def entry(self) -> Entry:
        """The service's ``run(config, *, shutdown_trigger, bus_url, only)``."""
        return cast(Entry, importlib.import_module(self.module).run)


SERVICES: tuple[Service, ...] = (
    Service(name="aaa", sandbox=False, split="servers", starts=0, up_per_server=True),
    Service(name="collector", sandbox=False, split="servers", starts=2),
    Service(name="evaluator", sandbox=True, split="servers", starts=1),
    Service(name="targeter", sandbox=True, split=None, starts=1),
    Service(name="notifier", sandbox=True, split=None, starts=1),
    Service(name="readmitter", sandbox=True, split="servers", starts=1),
    Service(name="agent", sandbox=False, split="clients", starts=3),
)
"""Every service, in the order the command line lists them."""

NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)
SANDBOX: tuple[str, ...] = tuple(s.name for s in SERVICES if s.sandbox)
"""The services that run in a replay sandbox."""


def service(name: str) -> Service:
    """The service called ``name``; KeyError if there is none."""
    for candidate in SERVICES:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def in_start_order(names: Collection[str] | None = None) -> list[Service]:
    """The services (those in ``names``, else all) in the order they start."""
    chosen = [s for s in SERVICES if names is None or s.name in names]
    return sorted(chosen, key=lambda s: s.starts)


class Process(NamedTuple):
    """One process of a plan: its name, its service and the extra arguments of its run."""

    name: str
    service: str
    args: list[str]


def plan(config: Config, names: Collection[str] | None = None) -> list[Process]:
    """Every process ``config`` needs (of the services in ``names``, else all), in start order.

    A replay sandbox runs the sandbox services alone, each told the sandbox's
    prefix. A service that runs per server has a process per reference server;
    one split by clients is not run in a farm without clients, and runs one
    process per agent user of the bus when ``bus.auth.agents`` names them.
    """
    if config.bus.sandbox:
        sandbox = ["--sandbox", config.bus.prefix]
        return [Process(s.name, s.name, sandbox) for s in in_start_order(names) if s.sandbox]
    processes: list[Process] = []
    agents = config.bus.auth.agents if config.bus.auth is not None else {}
    for s in in_start_order(names):
        if s.up_per_server:
            processes += [
                Process(f"{s.name}-{server.id}", s.name, ["--only", server.id])
                for server in config.servers
                if server.reference
            ]
        elif s.split == "clients" and agents:
            # one process per agent user of the bus (bus.auth.agents), serving its clients
            processes += [
                Process(user, s.name, [arg for c in served for arg in ("--only", c)])
                for user, served in agents.items()
                if served
            ]
        elif s.split != "clients" or config.clients:
            processes.append(Process(s.name, s.name, []))
    return processes


def run_argv(
    service: str, config_path: Path, *, bus_url: str | None = None, args: Sequence[str] = ()
) -> list[str]:
    """The command line of one service's process: `aaa-failover run` with this interpreter."""
    argv = [sys.executable, "-m", "services.launch.cli", "run", service, "-c", str(config_path)]
    if bus_url is not None:
        argv += ["--bus-url", bus_url]
    return [*argv, *args]

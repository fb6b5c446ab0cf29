"""What each service's process reads of its config's secrets, without starting it.

:func:`secrets_read` runs the code a service runs as it starts (its keyring,
``Keyring.from_config(config, service=name)`` or the agent's own, and each of
its own ``config.read_secret`` calls: a reference server's clients and status
secret, the collector's status secrets and probes, the notifier's clients'
secrets, an agent's clients' (with their ``verify_secrets``) and its proxy's)
on a copy of the config that records every secret asked for instead of
reading it. :func:`bus_files` are the bus's files it reads as it joins: its
NATS user's password and the TLS files. :func:`files_read` is both, as the
config names the files: what a container of that service must hold, and
nothing more (compose/).

No I/O: no secret is read, no socket opened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from services.runtime.config import Config, RadiusCheck, Secret
from services.runtime.keyring import Keyring
from services.runtime.permissions import AGENT, user_for

PLACEHOLDER = b"0" * 32
"""What a recorded secret reads as: the services only keep the bytes."""


class _Recording(Config, frozen=True, kw_only=True):
    """A config whose ``read_secret`` writes down the secret and reads nothing."""

    asked: list[Secret] = msgspec.field(default_factory=list)

    def read_secret(self, secret: Secret) -> bytes:
        self.asked.append(secret)
        return PLACEHOLDER


def recording(config: Config) -> _Recording:
    """A copy of ``config`` that records what is read of it (``.asked``)."""
    fields = {name: getattr(config, name) for name in config.__struct_fields__}
    return _Recording(**fields)


def _aaa(config: Config, only: Sequence[str] | None) -> None:
    from services.aaa.service import build_servers

    build_servers(config, list(only) if only else None)


def _collector(config: Config, only: Sequence[str] | None) -> None:
    from services.collector.service import make_prober

    for server in config.select_servers(only):
        config.read_secret(server.status_secret)
        make_prober(server, config)
        # the checks of the services a server needs read theirs at each check
        for check in server.services:
            if isinstance(check, RadiusCheck):
                config.read_secret(check.secret)


def _notifier(config: Config, only: Sequence[str] | None) -> None:
    # Notifier.__init__: every client's secret, for notice authenticators and CoA (its
    # keyring reads the clients' verify_secrets too, for their acks)
    for client in config.clients:
        config.read_secret(client.secret)


def _agent(config: Config, only: Sequence[str] | None) -> None:
    # services.agent.service.run: its clients' secrets (its keyring too), the secrets
    # their notices and CoA also verify under while they rotate, its proxy's
    for client in config.select_clients(only):
        config.read_secret(client.secret)
        for secret in client.verify_secrets:
            config.read_secret(secret)
        if client.proxy is not None:
            config.read_secret(client.proxy.nas_secret)


_OWN: dict[str, Callable[[Config, Sequence[str] | None], None]] = {
    "aaa": _aaa,
    "collector": _collector,
    "notifier": _notifier,
    AGENT: _agent,
}
"""Each service's own reads at start, besides its keyring (none: the keyring alone)."""


def secrets_read(config: Config, service: str, only: Sequence[str] | None = None) -> list[Secret]:
    """Every secret of ``config`` that ``service --only ...`` reads, in the order it reads
    them (a secret read twice is listed twice)."""
    recorder = recording(config)
    own = _OWN.get(service)
    if own is not None:
        own(recorder, only)
    if service != AGENT:
        # lifecycle.run_service: the agent brings a keyring of its clients' secrets
        Keyring.from_config(recorder, service=service)
    return list(recorder.asked)


def bus_user(config: Config, service: str, only: Sequence[str] | None = None) -> str:
    """The NATS user ``service --only ...`` joins as (an agent: the agent user of
    ``bus.auth.agents`` that serves its clients, as `aaa-failover run agent` picks it)."""
    auth = config.bus.auth
    if auth is not None and auth.user:
        return auth.user
    if service == AGENT and auth is not None and auth.agents:
        from services.launch.bususers import agent_user

        return agent_user(config, only)
    return user_for(service, sandbox=config.bus.sandbox)


def bus_files(config: Config, service: str, only: Sequence[str] | None = None) -> list[str]:
    """The bus's files ``service --only ...`` reads as it joins, as the config names them:
    its NATS user's password (``bus.auth.dir``) and the TLS files of a client
    (``bus.tls``: the CA, and its own certificate and key when set)."""
    bus = config.bus
    files = []
    if bus.auth is not None:
        files.append(f"{bus.auth.dir.rstrip('/')}/{bus_user(config, service, only)}")
    if bus.tls is not None:
        files += [f for f in (bus.tls.ca, bus.tls.cert, bus.tls.key) if f is not None]
    return files


def files_read(config: Config, service: str, only: Sequence[str] | None = None) -> set[str]:
    """Every file ``service --only ...`` reads of its secrets and the bus's, as the config
    names them (a secret from the environment is no file)."""
    secrets = {s.file for s in secrets_read(config, service, only) if s.file is not None}
    return secrets | set(bus_files(config, service, only))

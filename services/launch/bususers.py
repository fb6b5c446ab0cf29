"""The users of a farm's bus, with their passwords and permissions, and its TLS.

`up` and `demo` start the embedded nats-server with them (:func:`embedded`),
compose's NATS container with the same (``aaa-failover bus-server``), and
the test suite's shared server with the permissions of any prefix. The
permissions come from services/runtime/permissions.py; the passwords from
files (services/runtime/busauth.py), made here when missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.launch import devca
from services.runtime import busauth
from services.runtime.config import Config, ConfigError
from services.runtime.natsserver import EmbeddedNats, ServerTls, ServerUser
from services.runtime.permissions import Client, Permissions, agent_user_for, users


def farm_users(config: Config, *, any_prefix: bool = False) -> dict[str, Permissions]:
    """Every user of ``config``'s bus and its permissions (of any prefix: a shared server)."""
    agents = config.bus.auth.agents if config.bus.auth is not None else None
    clients = [Client(c.id, c.home) for c in config.clients]
    try:
        return users(
            None if any_prefix else config.bus.prefix,
            clients,
            agents,
            servers=[s.id for s in config.servers],
        )
    except ValueError as exc:
        raise ConfigError(f"bus.auth.agents: {exc}") from None


def embedded_auth_dir(config: Config) -> Path:
    """Where the embedded bus's password files are: ``bus.auth.dir``, else ``.nats/auth``."""
    if config.bus.auth is not None:
        return config.path(config.bus.auth.dir)
    return config.path(str(busauth.EMBEDDED_AUTH))


def server_users(
    permissions: dict[str, Permissions], directory: Path, *, create: bool = True
) -> list[ServerUser]:
    """Each user with its password from ``directory`` (made first when missing, with
    ``create``) and its permissions."""
    if create:
        busauth.write_passwords(directory, permissions)
    return [
        ServerUser(name, busauth.read_password(directory, name), allowed)
        for name, allowed in permissions.items()
    ]


def server_tls(config: Config) -> ServerTls | None:
    """The TLS the server of ``config`` serves: ``bus.tls``'s server certificate and key,
    clients checked against its CA, and a client certificate required when the config
    gives the clients one. None without ``bus.tls``."""
    paths = busauth.tls_paths(config.bus)
    if not paths:
        return None
    if "server_cert" not in paths:
        raise ConfigError(
            "bus.tls: a server of this config needs server_cert and server_key "
            "(aaa-failover dev-ca makes them)"
        )
    for name, path in paths.items():
        if not path.is_file():
            raise ConfigError(f"bus.tls.{name}: no file {path}")
    return ServerTls(
        cert=paths["server_cert"], key=paths["server_key"], ca=paths["ca"], verify="cert" in paths
    )


def embedded_tls(config: Config) -> ServerTls:
    """The embedded server's TLS: ``bus.tls``'s server certificate, else a development CA
    and server certificate in ``.nats/tls`` (made when missing or expiring)."""
    if config.bus.tls is not None:
        tls = server_tls(config)
        assert tls is not None
        return tls
    directory = config.path(str(busauth.EMBEDDED_TLS))
    paths = [directory / name for name in devca.FILES]
    if not all(p.is_file() for p in paths) or devca.expires_within(paths[1], days=7):
        devca.make_dev_ca(directory, overwrite=True)
        directory.chmod(0o700)
    return ServerTls(cert=paths[1], key=paths[2], ca=paths[0])


def embedded(config: Config) -> EmbeddedNats:
    """The embedded nats-server of ``config`` (not started): JetStream in ``.nats/``, a
    user per service with its own permissions and its password in ``.nats/auth/`` (or
    ``bus.auth.dir``), TLS only (``bus.tls``'s server certificate, else the development
    CA of ``.nats/tls``)."""
    directory = embedded_auth_dir(config)
    return EmbeddedNats(
        config.path(".nats"),
        users=server_users(farm_users(config), directory),
        tls=embedded_tls(config),
    )


def agent_user(config: Config, only: Sequence[str] | None) -> str:
    """The user of the agent serving ``only`` (every client without it)."""
    agents = config.bus.auth.agents if config.bus.auth is not None else None
    served = list(only) if only else [c.id for c in config.clients]
    try:
        return agent_user_for(agents, served)
    except ValueError as exc:
        raise ConfigError(f"bus.auth.agents: {exc}") from None

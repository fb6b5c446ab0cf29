"""The test bus's security: a password file per user and a development CA.

The session's nats-server runs with every user of
services/runtime/permissions.py, with the permissions of any prefix (each
test has its own), and TLS only; every farm the tests write names the same
password folder and CA, so every integration test joins as the services do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.launch.bususers import server_users
from services.launch.devca import make_dev_ca
from services.runtime.natscluster import NatsCluster
from services.runtime.natsserver import EmbeddedNats, ServerTls
from services.runtime.permissions import users


@dataclass(frozen=True)
class BusSecurity:
    directory: Path

    @classmethod
    def make(cls, directory: Path) -> BusSecurity:
        make_dev_ca(directory / "tls")
        return cls(directory)

    @property
    def auth_dir(self) -> Path:
        return self.directory / "auth"

    @property
    def tls_dir(self) -> Path:
        return self.directory / "tls"

    @property
    def auth(self) -> dict[str, Any]:
        """The ``bus.auth`` table of a farm on the session's server."""
        return {"dir": str(self.auth_dir)}

    @property
    def tls(self) -> dict[str, Any]:
        """The ``bus.tls`` table of a farm on the session's server: the CA alone."""
        return {"ca": str(self.tls_dir / "ca.pem")}

    def password(self, user: str) -> str:
        return (self.auth_dir / user).read_text().strip()

    @property
    def server_tls(self) -> ServerTls:
        return ServerTls(
            cert=self.tls_dir / "server.pem",
            key=self.tls_dir / "server-key.pem",
            ca=self.tls_dir / "ca.pem",
        )

    def server(self, data_dir: Path, *, prefix: str | None = None) -> EmbeddedNats:
        """A nats-server (not started) with every user (of ``prefix``, else of any) and TLS."""
        return EmbeddedNats(
            data_dir, users=server_users(users(prefix), self.auth_dir), tls=self.server_tls
        )

    def cluster(self, directory: Path, *, size: int = 3) -> NatsCluster:
        """A cluster of ``size`` nats-servers (not started), each with every user of any
        prefix and TLS, as the session's server has."""
        return NatsCluster(
            directory,
            size=size,
            users=server_users(users(None), self.auth_dir),
            tls=self.server_tls,
        )

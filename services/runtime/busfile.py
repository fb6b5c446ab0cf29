"""Where a running `aaa-failover up` has its bus: a small file beside the config.

With no bus URL in the config, `up` starts the embedded nats-server on a
free port, which nothing else could guess. While it runs it writes that URL,
with its own pid and start time, to ``<config>.bus`` (``farm.toml.bus``
beside ``farm.toml``), atomically, and removes the file when it stops
cleanly. The tools given only ``-c farm.toml`` read it (:func:`choose`):
``--bus-url`` first, then the config's ``bus.url``, then the URL of a
running `up` of that config, else the default. A file whose `up` is no
longer running (killed, or its pid reused since) is ignored, and the next
`up` overwrites it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import msgspec
import psutil

logger = logging.getLogger(__name__)

SUFFIX = ".bus"
"""The bus file of ``farm.toml`` is ``farm.toml.bus``."""

START_TOLERANCE_S = 1.0
"""How far a process's start time may differ from the recorded one and still be the same."""


class BusFile(msgspec.Struct, frozen=True, kw_only=True):
    """What `up` writes: the bus URL, and which process wrote it."""

    url: str
    pid: int
    started: float
    """The writer's start time (UNIX seconds, as psutil reads it): tells a reused pid apart."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(BusFile)


def path_for(config_path: str | Path) -> Path:
    """The bus file of the config at ``config_path``: beside it, named after it."""
    config = Path(config_path).resolve()
    return config.with_name(config.name + SUFFIX)


def is_alive(found: BusFile) -> bool:
    """Whether the process that wrote ``found`` is still running (the same one, not a reuse)."""
    try:
        process = psutil.Process(found.pid)
        started: float = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # it exists but cannot be read: trust the pid alone
    return abs(started - found.started) <= START_TOLERANCE_S


def write(config_path: str | Path, url: str) -> Path:
    """Record, atomically, that this process runs the bus of ``config_path`` at ``url``."""
    path = path_for(config_path)
    me = psutil.Process()
    data = _encoder.encode(BusFile(url=url, pid=me.pid, started=me.create_time())) + b"\n"
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # a URL, no secret: readable by the operator's tools
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    logger.debug("bus of %s at %s, recorded in %s", config_path, url, path)
    return path


def recorded(config_path: str | Path) -> BusFile | None:
    """What the bus file of ``config_path`` says, whether its `up` still runs or not
    (:func:`is_alive` tells); None without a readable file."""
    path = path_for(config_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.warning("ignoring the bus file %s: %s", path, exc.strerror)
        return None
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        logger.warning("ignoring the bus file %s: %s", path, exc)
        return None


def read(config_path: str | Path) -> BusFile | None:
    """The bus file of ``config_path`` if an `up` that is still running wrote it, else None."""
    found = recorded(config_path)
    if found is None:
        return None
    if not is_alive(found):
        logger.info(
            "ignoring the bus file %s: the `up` that wrote it (pid %d) is no longer running",
            path_for(config_path),
            found.pid,
        )
        return None
    return found


def running_url(config_path: str | Path) -> str | None:
    """The bus URL of an `up` running ``config_path``, or None."""
    found = read(config_path)
    return None if found is None else found.url


def remove(config_path: str | Path) -> None:
    """Remove the bus file of ``config_path`` if this process wrote it."""
    path = path_for(config_path)
    try:
        found = _decoder.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return
    if found.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def choose(config_path: str | Path, *, given: str | None, configured: str | None) -> str | None:
    """The bus a command on ``config_path`` joins: ``given`` (``--bus-url``), else
    ``configured`` (``bus.url``), else the bus of an `up` running this config, else
    None (the caller's default)."""
    if given:
        return given
    if configured:
        return configured
    url = running_url(config_path)
    if url is not None:
        logger.info("bus at %s, from the `up` running %s", url, config_path)
    return url

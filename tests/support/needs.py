"""What a test needs that the machine may not have: it skips, saying what is missing and how
to get it, except under CI (the environment variable ``CI`` set), where every need is installed
by ``.ci/run`` and a missing one fails the test instead of hiding it.

- ``module(name, extra)``: a Python module that comes with one of the project's extras;
- ``program(name, install)``: a program on PATH (or in /usr/sbin);
- ``readable(path, install)``: a file that a package installs, readable by this user;
- ``raw_sockets()``: a raw ICMP socket may be opened (root or CAP_NET_RAW). Tests mark
  themselves ``@pytest.mark.raw_sockets`` and ``tests/conftest.py`` checks before they run.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return bool(os.environ.get("CI"))


def unmet(reason: str) -> NoReturn:
    """Skip with ``reason``; under CI, fail with it."""
    if under_ci():
        pytest.fail(f"{reason} (CI must provide it)", pytrace=False)
    pytest.skip(reason)


def module(name: str, extra: str) -> ModuleType:
    """Import ``name``, which the project's ``extra`` installs."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    unmet(f"{name} is not installed: it comes with the '{extra}' extra (make test has it)")


def program(name: str, install: str) -> str:
    """The path of ``name``, looked for on PATH and in /usr/sbin; ``install`` says how to get it."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        unmet(f"{name} is not installed ({install})")
    return found


def raw_sockets_refused() -> str | None:
    """Why a raw ICMP socket, as the ICMP transport opens, is refused here; None if it is not."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    except PermissionError:
        return f"raw ICMP sockets need root or CAP_NET_RAW (running as uid {os.getuid()})"
    return None


def raw_sockets() -> None:
    reason = raw_sockets_refused()
    if reason is not None:
        unmet(reason)


def readable(path: Path, install: str) -> None:
    """``path`` exists (``install`` puts it there) and may be read by this user."""
    try:
        path.open("rb").close()
        return
    except FileNotFoundError:
        reason = f"{path} does not exist ({install})"
    except PermissionError:
        reason = f"{path} may not be read by uid {os.getuid()} (root or its group may)"
    unmet(reason)

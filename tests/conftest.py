"""Fixtures: one real nats-server per session, a unique subject prefix per test."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.launch.farm import write_farm
from services.runtime.config import Config
from services.runtime.natsserver import EmbeddedNats
from tests.support import needs
from tests.support.bussecurity import BusSecurity

TESTS = Path(__file__).resolve().parent

pytest_plugins = ["tests.support.freeradius", "tests.support.recorded"]


# Markers (pyproject.toml) that a test's fixtures tell; each fixture also counts through the
# fixtures that use it (``farm`` runs on ``nats_server``).
FIXTURE_MARKERS = {
    "nats_server": ("nats",),
    "recorded_demo": ("nats", "slow"),
    "freeradius": ("freeradius",),
    "freeradius_proxy": ("freeradius",),
}
LAYER_MARKERS = {
    "bus": ("nats",),
    "freeradius": ("freeradius",),
    "fuzz": ("fuzz",),
}
"""Markers that every test of a layer's folder (``tests/<layer>/``) carries, whatever it uses."""
SLOW_TIMEOUT_S = 90
"""A test that allows itself this long (``@pytest.mark.timeout``) is slow."""


def _kinds(item: pytest.Item) -> set[str]:
    """The markers of ``item`` known from its fixtures, its folder, its module and its other
    marks. A benchmark's short real run (``test_bench_*`` in bus/ or freeradius/) is ``bench``;
    its figures on plain records (unit/bench/) are unit tests like any other."""
    kinds = {m for f in getattr(item, "fixturenames", ()) for m in FIXTURE_MARKERS.get(f, ())}
    where = item.path.relative_to(TESTS).parts if item.path.is_relative_to(TESTS) else ()
    layer = where[0] if len(where) > 1 else ""
    kinds.update(LAYER_MARKERS.get(layer, ()))
    if layer in LAYER_MARKERS and item.path.stem.startswith("test_bench_"):
        kinds.add("bench")
    if where == ("bus", "test_soak.py"):
        kinds.add("slow")
    if item.get_closest_marker("raw_sockets") is not None:
        kinds.add("root")
    timeout = item.get_closest_marker("timeout")
    if timeout is not None and timeout.args and timeout.args[0] >= SLOW_TIMEOUT_S:
        kinds.add("slow")
    return kinds


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what it needs (:func:`_kinds`), so that ``-m "not freeradius"`` and
    the like select. Where raw sockets are refused, outside CI, the tests marked
    ``raw_sockets`` are skipped at their own line; under CI they fail in their setup (below)."""
    for item in items:
        for kind in sorted(_kinds(item) - {m.name for m in item.iter_markers()}):
            item.add_marker(kind)
    marked = [item for item in items if item.get_closest_marker("raw_sockets") is not None]
    reason = needs.raw_sockets_refused() if marked and not needs.under_ci() else None
    if reason is not None:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("raw_sockets") is not None:
        needs.raw_sockets()


@pytest.fixture(autouse=True)
def _root_logging() -> Iterator[None]:
    """Put the root logger back after a test: `main()` points it at the test's own
    captured stderr, which is closed once the test ends."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def bus_security(tmp_path_factory: pytest.TempPathFactory) -> BusSecurity:
    """The users' password files and the TLS files of the session's nats-server."""
    return BusSecurity.make(tmp_path_factory.mktemp("bus-security"))


@pytest.fixture(scope="session")
def nats_server(
    bus_security: BusSecurity, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedNats]:
    """The session's nats-server: a user per service, each allowed only its own kinds of
    subject (of any prefix: every test has its own), and TLS only."""
    server = bus_security.server(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    violations = server.violations()
    server.stop()
    # a service refused what it does means its permissions are wrong
    assert not violations, "the bus refused its own services:\n" + "\n".join(violations[:20])


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


FarmFactory = Callable[..., tuple[Config, Path]]


@pytest.fixture
def farm(
    tmp_path: Path, nats_server: EmbeddedNats, bus_security: BusSecurity, prefix: str
) -> FarmFactory:
    """Write a farm config on the session's nats-server under this test's prefix."""

    def make(overrides: dict[str, Any] | None = None, **kwargs: Any) -> tuple[Config, Path]:
        kwargs.setdefault("bus_url", nats_server.url)
        kwargs.setdefault("prefix", prefix)
        kwargs.setdefault("bus_auth", bus_security.auth)
        kwargs.setdefault("bus_tls", bus_security.tls)
        return write_farm(tmp_path / "farm", overrides, **kwargs)

    return make

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
from tests import needs

pytest_plugins = ["tests.freeradius", "tests.recorded"]


# Markers (pyproject.toml) that a test's fixtures tell; each fixture also counts through the
# fixtures that use it (``farm`` runs on ``nats_server``).
FIXTURE_MARKERS = {
    "nats_server": ("nats",),
    "recorded_demo": ("nats", "slow"),
    "freeradius": ("freeradius",),
    "freeradius_proxy": ("freeradius",),
}
SLOW_TIMEOUT_S = 90
"""A test that allows itself this long (``@pytest.mark.timeout``) is slow."""


def _kinds(item: pytest.Item) -> set[str]:
    """The markers of ``item`` known from its fixtures, its module and its other marks."""
    kinds = {m for f in getattr(item, "fixturenames", ()) for m in FIXTURE_MARKERS.get(f, ())}
    module = item.path.stem
    if module.startswith("test_bench_"):
        kinds.add("bench")
    if module == "test_soak":
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
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


FarmFactory = Callable[..., tuple[Config, Path]]


@pytest.fixture
def farm(tmp_path: Path, nats_server: EmbeddedNats, prefix: str) -> FarmFactory:
    """Write a farm config on the session's nats-server under this test's prefix."""

    def make(overrides: dict[str, Any] | None = None, **kwargs: Any) -> tuple[Config, Path]:
        kwargs.setdefault("bus_url", nats_server.url)
        kwargs.setdefault("prefix", prefix)
        return write_farm(tmp_path / "farm", overrides, **kwargs)

    return make

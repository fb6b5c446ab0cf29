"""Prometheus /metrics: the [metrics] config, and a served evaluator scraped over HTTP."""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.events import MetricsSample
from services.evaluator.service import run
from services.launch.cli import main
from services.launch.farm import farm_dict, write_config
from services.runtime.bus import Signer
from services.runtime.config import ConfigError, MetricsConfig, load_config
from tests.conftest import FarmFactory
from tests.helpers import running
from tests.test_evaluator_service import HIGH, LOW, observer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _write(tmp_path: Path, **sections: object) -> Path:
    data = farm_dict(tmp_path, bus_url="nats://127.0.0.1:1", clients=2)
    data.update(sections)
    return write_config(tmp_path, data)


def test_metrics_are_off_unless_a_port_is_configured(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path))
    assert config.metrics == MetricsConfig()
    assert config.metrics.port("evaluator") is None

    config = load_config(
        _write(tmp_path, metrics={"listen": "0.0.0.0", "ports": {"evaluator": 9102}})
    )
    assert config.metrics.listen == "0.0.0.0"
    assert config.metrics.port("evaluator") == 9102
    assert config.metrics.port("targeter") is None

    overridden = config.with_metrics_port("targeter", 0)
    assert overridden.metrics.ports == {"evaluator": 9102, "targeter": 0}
    assert overridden.metrics.listen == "0.0.0.0"
    assert config.metrics.port("targeter") is None


def test_bad_metrics_config_fails_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prots"):
        load_config(_write(tmp_path, metrics={"prots": {"evaluator": 1}}))
    with pytest.raises(ConfigError, match=r"ports\.evaluator"):
        load_config(_write(tmp_path, metrics={"ports": {"evaluator": 70000}}))
    with pytest.raises(ConfigError, match="metrics"):
        load_config(_write(tmp_path, metrics={"ports": {"evaluator": "fast"}}))


def test_metrics_port_option_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path)
    assert main(["run", "evaluator", "-c", str(path), "--metrics-port", "70000"]) == 2
    assert "--metrics-port" in capsys.readouterr().err


class _Urls(logging.Handler):
    """Collects the URLs services log for their metrics."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.urls: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.fullmatch(r"metrics at (\S+)", record.getMessage())
        if found:
            self.urls.append(found.group(1))


@contextmanager
def metrics_urls() -> Iterator[list[str]]:
    """The metrics URLs logged while the block runs."""
    log = logging.getLogger("services.runtime.metrics")
    handler, level = _Urls(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler.urls
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


async def scrape(url: str) -> Samples:
    """Every sample at ``url`` by name and labels."""
    text = await asyncio.to_thread(_get, url)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_evaluator_serves_its_metrics(farm: FarmFactory) -> None:
    config, _ = farm(clients=0)
    config = config.with_metrics_port("evaluator", 0)
    assert config.bus.key is not None
    ev = {"service": "evaluator"}
    with metrics_urls() as urls:
        async with AsyncExitStack() as stack, running(run, config):
            assert len(urls) == 1 and re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", urls[0])
            url = urls[0]
            obs = await stack.enter_async_context(observer(config, stack))
            await obs.wait_ready()

            before = await scrape(url)
            received = value(before, "aaa_failover_events_received_total", **ev)
            assert received is not None and received >= 1
            assert value(before, "aaa_failover_incident_state", server="A") == 0

            report = await obs.report_of(await obs.sample(LOW))
            assert report.health == 0.0
            low = await scrape(url)
            now_received = value(low, "aaa_failover_events_received_total", **ev)
            assert now_received is not None and now_received > received
            assert value(low, "aaa_failover_health", server="A") == 0.0
            published = value(low, "aaa_failover_events_published_total", **ev)
            assert published is not None and published >= 1
            decisions = value(low, "aaa_failover_decision_latency_seconds_count")
            assert decisions is not None and decisions >= 2

            report = await obs.report_of(await obs.sample(LOW))
            assert report.state == "overloaded"
            report = await obs.report_of(await obs.sample(HIGH))
            assert report.health == 0.875
            high = await scrape(url)
            assert value(high, "aaa_failover_health", server="A") == 0.875
            assert value(high, "aaa_failover_incident_state", server="A") == 1
            assert (
                value(high, "aaa_failover_events_dropped_total", reason="bad-signature", **ev)
                is None
            )

            # A forged sample, then a good one on the same subscription: once the
            # good one is answered, the forged one has been counted.
            forged = Signer(config.bus.key.id, b"not the bus key")
            sample = MetricsSample(server="A", seq=1000, status_ok=True, threads_active=HIGH)
            await obs.bus.publish(obs.bus.subjects.metrics("A"), sample, signer=forged)
            await obs.report_of(await obs.sample(HIGH))
            after = await scrape(url)
            dropped = value(
                after, "aaa_failover_events_dropped_total", reason="bad-signature", **ev
            )
            assert dropped == 1
            assert value(after, "aaa_failover_handler_errors_total", **ev) == 0

            # A guard's drop goes the same way: a sample of a server it does not know.
            await obs.sample(HIGH, server="Z")
            await obs.report_of(await obs.sample(HIGH))
            guarded = await scrape(url)
            assert (
                value(guarded, "aaa_failover_events_dropped_total", reason="unknown-server", **ev)
                == 1
            )
            handled = value(
                guarded, "aaa_failover_handler_seconds_count", event="MetricsSample", **ev
            )
            assert handled is not None and handled >= 5
    # Stopped with the service: the port is closed.
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(_get, url)

"""Prometheus /metrics: a served evaluator on a real nats-server, scraped over HTTP."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from contextlib import AsyncExitStack

import pytest

from schemas.events import MetricsSample
from services.evaluator.service import run
from services.runtime.bus import Signer
from tests.conftest import FarmFactory
from tests.support.helpers import running
from tests.support.observer import HIGH, LOW, observer
from tests.support.scraping import _get, metrics_urls, scrape, value


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
            (collector_key,) = config.bus.service_keys["collector"]
            forged = Signer(collector_key.id, b"not the collector's key")
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

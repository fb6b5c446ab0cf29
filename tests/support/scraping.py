"""Prometheus /metrics read over HTTP: the URLs a service logs it serves (``metrics_urls``), one
scrape parsed into samples (``scrape``), and one sample's value by name and labels (``value``)."""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


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

"""The container health check of the aaa-failover image.

With a URL (the first argument, else ``AAA_FAILOVER_HEALTH_URL``) it is healthy
when a GET of that URL answers 2xx. Without one it finds the service itself:
every process of this container (those sharing its mount namespace, which holds
with ``pid: host`` too) that listens on TCP, and asks each such port for
``/metrics``. The services listen on TCP only for their Prometheus endpoint,
so a service started with ``--metrics-port 0`` (replicas on one host network)
is found as well as one on a fixed port. Exit status 0: healthy; 1: not.
"""

from __future__ import annotations

import logging
import os
import sys
import urllib.error
import urllib.request

import psutil

logger = logging.getLogger(__name__)

TIMEOUT_S = 3.0


def get(url: str) -> str | None:
    """None when ``url`` answers 2xx, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def _namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def listening_ports() -> list[tuple[str, int]]:
    """(address, port) of every TCP listener of the processes of this container."""
    mine = _namespace("self")
    found: set[tuple[str, int]] = set()
    for proc in psutil.process_iter():
        if _namespace(proc.pid) != mine:
            continue
        try:
            connections = proc.net_connections(kind="tcp")
        except (psutil.Error, OSError):
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                host = conn.laddr.ip
                if host in ("0.0.0.0", ""):
                    host = "127.0.0.1"
                elif host == "::":
                    host = "::1"
                found.add((host, conn.laddr.port))
    return sorted(found)


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("AAA_FAILOVER_HEALTH_URL")
    if url:
        problem = get(url)
        if problem is None:
            return 0
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    ports = listening_ports()
    if not ports:
        print("unhealthy: no process of this container serves /metrics", file=sys.stderr)
        return 1
    problems = []
    for host, port in ports:
        problem = get(url_of(host, port))
        if problem is None:
            return 0
        problems.append(problem)
    print(f"unhealthy: {'; '.join(problems)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

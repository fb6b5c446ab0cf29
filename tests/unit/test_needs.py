"""The suite says what it needs (tests/support/needs.py): without it a test is skipped with the
reason, and under CI, where .ci/run installs everything and runs as root, it fails instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import needs

ROOT = Path(__file__).resolve().parents[2]
RAW_SOCKET_TEST = "tests/unit/radius/test_icmp.py::test_forged_and_broken_icmp_notices_are_rejected"
RAW_SOCKET_REASON = "raw ICMP sockets need root or CAP_NET_RAW"


def _without_cap_net_raw() -> list[str]:
    """A command prefix under which raw sockets are refused, as for an unprivileged user."""
    if needs.raw_sockets_refused() is not None:
        return []
    setpriv = needs.program("setpriv", "Debian: util-linux")
    return [setpriv, "--bounding-set", "-net_raw", "--inh-caps", "-net_raw"]


def _pytest(test: str, *, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    command = [*_without_cap_net_raw(), sys.executable, "-m", "pytest", test, "-q", "-rs"]
    return subprocess.run(
        [*command, "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_raw_sockets_the_icmp_tests_skip_saying_why() -> None:
    run = _pytest(RAW_SOCKET_TEST, ci=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 skipped" in run.stdout
    assert RAW_SOCKET_REASON in run.stdout


def test_under_ci_without_raw_sockets_the_icmp_tests_fail() -> None:
    run = _pytest(RAW_SOCKET_TEST, ci=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 error" in run.stdout  # in its setup, before it runs
    assert RAW_SOCKET_REASON in run.stdout


def test_a_missing_module_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="the 'report' extra"):
        needs.module("aaa_failover_no_such_module", "report")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide it"):
        needs.module("aaa_failover_no_such_module", "report")
    assert needs.module("json", "test").dumps([]) == "[]"


def test_a_missing_program_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"not installed \(apt-get install x\)"):
        needs.program("aaa-failover-no-such-program", "apt-get install x")
    assert needs.program("sh", "").endswith("/sh")

"""Reading max_servers from the radiusd.conf FreeRADIUS installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.collector.radiusd import max_servers
from tests.support import needs

DEBIAN_RADIUSD_CONF = Path("/etc/freeradius/3.0/radiusd.conf")


@pytest.mark.freeradius
def test_the_installed_radiusd_conf() -> None:
    needs.readable(DEBIAN_RADIUSD_CONF, "Debian: apt-get install freeradius")
    assert max_servers(DEBIAN_RADIUSD_CONF.read_text()) == 32

"""Reading max_servers from a FreeRADIUS radiusd.conf."""

from __future__ import annotations

import pytest

from services.collector.radiusd import RadiusdConfError, cleanup_delay, items, max_servers


def test_max_servers_of_the_thread_pool_section() -> None:
    text = """
prefix = /usr
logdir = ${localstatedir}/log/${name}
max_servers = 99            # top level: not the thread pool's
log {
    file = "${logdir}/radius.log"   # a quoted # is no comment: "#"
}
thread pool {
    start_servers = 5
    # max_servers = 1
    max_servers = 24
    nested {
        max_servers = 3
    }
}
"""
    assert max_servers(text) == 24


def test_whitespace_quotes_and_one_line_sections() -> None:
    assert max_servers("thread   pool{max_servers=7}") == 7
    assert max_servers('thread pool {\n\tmax_servers\t=\t"12"\n}\n') == 12
    assert max_servers("thread pool {\r\n  max_servers = 9\r\n}\r\n") == 9


def test_only_the_top_level_thread_pool_counts() -> None:
    text = """
server inner {
    thread pool {
        max_servers = 5
    }
}
"""
    assert max_servers(text) is None


def test_absent_max_servers_is_none() -> None:
    assert max_servers("") is None
    assert max_servers("thread pool {\n  start_servers = 5\n}\n") is None
    assert max_servers("# thread pool { max_servers = 8 }\n") is None


def test_sections_are_tracked_through_unlang_and_expansions() -> None:
    text = r"""
policy {
    rewrite {
        if (&User-Name =~ /^([^#{]*)#(.*)$/) {
            update request {
                Tmp-String-0 := "%{%{1}:-%{2}}"
            }
        }
        elsif ("%{User-Name}" != "") {
            ok
        }
    }
}
sql {
    query = "INSERT INTO t \
        VALUES ('%{User-Name}', '{')"
}
thread pool {
    max_servers = 40
}
"""
    assert max_servers(text) == 40
    paths = {path for path, _, _ in items(text)}
    assert ("sql",) in paths and ("thread pool",) in paths


def test_bad_values_and_unbalanced_braces_are_refused() -> None:
    with pytest.raises(RadiusdConfError, match="not a number"):
        max_servers("thread pool {\n max_servers = lots\n}\n")
    with pytest.raises(RadiusdConfError, match="below 1"):
        max_servers("thread pool {\n max_servers = 0\n}\n")
    with pytest.raises(RadiusdConfError, match="not closed"):
        max_servers("thread pool {\n start_servers = 5\n")
    with pytest.raises(RadiusdConfError, match="closes no section"):
        max_servers("}\nthread pool {\n max_servers = 5\n}\n")


def test_cleanup_delay_is_the_top_level_item() -> None:
    text = "cleanup_delay = 2\nthread pool {\n  cleanup_delay = 9\n}\n"
    assert cleanup_delay(text) == 2.0
    assert cleanup_delay("thread pool {\n  max_servers = 4\n}\n") is None
    with pytest.raises(RadiusdConfError, match="not a number"):
        cleanup_delay("cleanup_delay = soon\n")
    with pytest.raises(RadiusdConfError, match="below 0"):
        cleanup_delay("cleanup_delay = -1\n")

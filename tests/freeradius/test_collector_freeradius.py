"""The collector finds a real FreeRADIUS run in the foreground by its name."""

from __future__ import annotations

from services.collector.process import ProcessWatch
from services.runtime.config import ProcessMatch
from tests.support.freeradius import StartFreeRadius


async def test_a_freeradius_run_with_f_is_found_by_name_not_by_pid_file(
    freeradius: StartFreeRadius,
) -> None:
    """FreeRADIUS in the foreground (as Debian's systemd unit runs it) writes no pid file;
    the harness writes one for the other tests, so it is removed here."""
    server = await freeradius()
    assert server.process is not None
    server.pid_file.unlink()
    by_file = ProcessWatch(ProcessMatch(pid_file=str(server.pid_file))).sample()
    assert by_file.pid is None
    assert any("does not exist" in e and "match by name instead" in e for e in by_file.errors)

    # name = "freeradius" finds it (the directory only tells it from other tests' servers)
    watch = ProcessWatch(
        ProcessMatch(name="freeradius", cmdline=f"freeradius -f -d {server.directory}"),
        prime_s=0.05,
    )
    reading = watch.sample()
    assert reading.errors == []
    assert reading.pid == server.process.pid
    assert reading.process_threads is not None and reading.process_threads >= 1
    assert reading.memory_percent is not None and reading.memory_percent > 0

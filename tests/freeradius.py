"""A real FreeRADIUS for tests: its own raddb in a tmp dir, run unprivileged in the foreground.

The ``freeradius`` fixture is a factory: ``server = await freeradius()``
writes a raddb (PAP user ``alice``/``wonderland``, an auth and an acct
listener, and a Status-Server listener with its own secret, all on free
loopback ports), starts ``freeradius -f -d DIR`` in its own session and
waits until the status port answers. Every server it started is stopped at
teardown (SIGTERM to its process group, then SIGKILL); ``server.stop()``
stops one earlier. ``server.entry("F")`` is the server's entry for a farm
config. Register it for every test module with
``pytest_plugins = ["tests.freeradius"]`` in ``tests/conftest.py``.

``await freeradius(backend=True, max_servers=256, start_servers=4)`` adds a
slow backend: ``server.slow_backend(share=0.5, delay_s=4.0)`` makes that share
of Access-Requests wait that long in ``authorize`` (rlm_perl, one sleeping
thread each; Status-Server is still answered at once), ``server.slow_backend(0.0)``
ends it. ``server.pause()`` / ``server.resume()`` SIGSTOP / SIGCONT the server.

When FreeRADIUS is not installed the tests using it are skipped, except
when the environment variable ``CI`` is set: then they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.farm import free_udp_port
from services.runtime.radius import RadiusTimeout, query_status
from tests import needs

IP = "127.0.0.1"
USER = "alice"
PASSWORD = "wonderland"
READY_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0


def require(program: str) -> str:
    """The path of ``program``; skip without it, or fail under CI (tests/needs.py)."""
    return needs.program(program, "Debian: apt-get install freeradius freeradius-utils")


RADIUSD_CONF = """\
# radiusd.conf written by tests/freeradius.py
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = ${{exec_prefix}}/sbin
logdir = {dir}/log
raddbdir = {dir}
radacctdir = {dir}/radacct
name = freeradius
confdir = ${{raddbdir}}
modconfdir = ${{confdir}}/mods-config
run_dir = {dir}/run
db_dir = {dir}
libdir = /usr/lib/freeradius
pidfile = ${{run_dir}}/freeradius.pid
# room for radclient's bursts; a finished request is kept (and only then counted
# in FreeRADIUS-Total-Auth-Responses) for cleanup_delay seconds
max_requests = 65536
cleanup_delay = 2

log {{
    destination = files
    file = ${{logdir}}/radius.log
    auth = no
}}

security {{
    status_server = yes
    allow_core_dumps = no
}}

thread pool {{
    start_servers = {start_servers}
    max_servers = {max_servers}   # the collector reads this one
    min_spare_servers = 1
    max_spare_servers = {max_servers}
    max_requests_per_server = 0
}}

client loopback {{
    ipaddr = 127.0.0.0/8
    secret = "{client_secret}"
}}

modules {{
    pap {{
    }}
    files {{
        filename = ${{confdir}}/users
    }}
    always ok {{
        rcode = ok
    }}
    detail {{
        filename = ${{radacctdir}}/detail
        permissions = 0600
    }}
{backend_module}}}

server default {{
    listen {{
        type = auth
        ipaddr = {ip}
        port = {auth_port}
    }}
    listen {{
        type = acct
        ipaddr = {ip}
        port = {acct_port}
    }}
    authorize {{
{backend_authorize}        files
        pap
    }}
    authenticate {{
        Auth-Type PAP {{
            pap
        }}
    }}
    accounting {{
        detail
        ok
    }}
}}

server status {{
    listen {{
        type = status
        ipaddr = {ip}
        port = {status_port}
    }}
    client admin {{
        ipaddr = {ip}
        secret = "{status_secret}"
    }}
    authorize {{
        ok
        Autz-Type Status-Server {{
            ok
        }}
    }}
}}
"""

# The slow backend (FreeRadius(backend=True)): rlm_perl runs this script first in
# ``authorize``. FreeRADIUS (built with perl ithreads, as Debian's is) clones the
# interpreter once per worker thread and calls it outside any lock, so one
# sleeping request holds its own thread only. Each interpreter re-reads the
# control file when its inode, size or (sub-second) mtime changes: one stat()
# per request otherwise. Measured with radclient (64 in parallel, 2 cores): about
# 8 us more FreeRADIUS CPU per request (33 against 25), 16,000 against 18,500
# Access-Requests/s, so no bottleneck at a few hundred a second.
BACKEND_MODULE = """\
    perl backend {
        filename = ${confdir}/backend.pl
    }
"""

BACKEND_AUTHORIZE = "        backend\n"

BACKEND_SCRIPT = r"""# backend.pl written by tests/freeradius.py: delays a share of Access-Requests
use strict;
use warnings;
use Time::HiRes ();

use constant RLM_MODULE_NOOP => 7;

my $control = '{control}';
my $seen = '';
my $share = 0;
my $delay = 0;
my $seeded = 0;

sub authorize {{
    # every thread's interpreter is a clone: seed each from /dev/urandom once
    if (!$seeded) {{
        srand();
        $seeded = 1;
    }}
    my @st = Time::HiRes::stat($control);
    my $key = @st ? "$st[1] $st[7] $st[9]" : '';
    if ($key ne $seen) {{
        $seen = $key;
        ($share, $delay) = (0, 0);
        if (open(my $fh, '<', $control)) {{
            my $line = <$fh>;
            close($fh);
            my @f = split(' ', defined $line ? $line : '');
            ($share, $delay) = (0 + ($f[0] || 0), 0 + ($f[1] || 0));
        }}
    }}
    if ($delay > 0 && $share > 0 && rand() < $share) {{
        Time::HiRes::sleep($delay);
    }}
    return RLM_MODULE_NOOP;
}}

1;
"""


@dataclass
class FreeRadius:
    """One FreeRADIUS server with its own raddb in ``directory``."""

    directory: Path
    max_servers: int = 16
    start_servers: int = 4
    auth_port: int = field(default_factory=lambda: free_udp_port(IP))
    acct_port: int = field(default_factory=lambda: free_udp_port(IP))
    status_port: int = field(default_factory=lambda: free_udp_port(IP))
    client_secret: str = field(default_factory=lambda: secrets.token_hex(12))
    status_secret: str = field(default_factory=lambda: secrets.token_hex(12))
    backend: bool = False
    process: subprocess.Popen[bytes] | None = None
    paused: bool = field(default=False, init=False)

    @property
    def radiusd_conf(self) -> Path:
        return self.directory / "radiusd.conf"

    @property
    def pid_file(self) -> Path:
        """The pid file the harness writes (FreeRADIUS writes none in the foreground)."""
        return self.directory / "run" / "freeradius.pid"

    @property
    def status_secret_file(self) -> Path:
        return self.directory / "status.secret"

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / "radius.log"

    @property
    def output_file(self) -> Path:
        return self.directory / "output.log"

    @property
    def backend_file(self) -> Path:
        """The slow backend's control file: one line, ``share delay_s``."""
        return self.directory / "backend"

    @property
    def auth_address(self) -> tuple[str, int]:
        return (IP, self.auth_port)

    def write(self) -> None:
        """Write the raddb: radiusd.conf, an empty dictionary, the users file, the secret."""
        for sub in ("log", "run", "radacct"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self.radiusd_conf.write_text(
            RADIUSD_CONF.format(
                dir=self.directory,
                ip=IP,
                auth_port=self.auth_port,
                acct_port=self.acct_port,
                status_port=self.status_port,
                client_secret=self.client_secret,
                status_secret=self.status_secret,
                max_servers=self.max_servers,
                start_servers=self.start_servers,
                backend_module=BACKEND_MODULE if self.backend else "",
                backend_authorize=BACKEND_AUTHORIZE if self.backend else "",
            )
        )
        (self.directory / "dictionary").write_text("")
        (self.directory / "users").write_text(f'{USER} Cleartext-Password := "{PASSWORD}"\n')
        self.status_secret_file.write_text(self.status_secret + "\n")
        self.status_secret_file.chmod(0o600)
        if self.backend:
            (self.directory / "backend.pl").write_text(
                BACKEND_SCRIPT.format(control=self.backend_file)
            )
            self.slow_backend(0.0)

    def slow_backend(self, share: float, delay_s: float = 0.0) -> None:
        """From now on, delay ``share`` (0-1) of Access-Requests by ``delay_s`` each, at random.

        ``slow_backend(0.0)`` puts the backend back to normal. The file is replaced
        in one rename, so a request reads either the old line or the new one.
        """
        if not self.backend:
            raise ValueError("this server has no slow backend: start it with backend=True")
        if not 0.0 <= share <= 1.0 or delay_s < 0:
            raise ValueError(f"share must be in [0, 1] and delay_s >= 0, not {share}, {delay_s}")
        partial = self.backend_file.with_name(self.backend_file.name + ".new")
        partial.write_text(f"{share!r} {delay_s!r}\n")
        os.replace(partial, self.backend_file)

    def start(self) -> None:
        """Start ``freeradius -f -d DIR`` in its own session and write its pid file."""
        program = require("freeradius")
        with self.output_file.open("wb") as output:
            self.process = subprocess.Popen(
                [program, "-f", "-d", str(self.directory)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self.process.pid}\n")

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until the status port answers a Status-Server; fail with the log if not."""
        deadline = time.monotonic() + timeout_s
        secret = self.status_secret.encode()
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise AssertionError(f"freeradius is not running (exit {code}):\n{self.logs()}")
            try:
                await query_status((IP, self.status_port), secret, timeout_s=0.2)
                return
            except (RadiusTimeout, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"freeradius did not answer in {timeout_s}s:\n{self.logs()}")
            await asyncio.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP the server: it takes in packets (the kernel queues them) but answers none."""
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("freeradius is not running")
        _signal_group(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT a paused server: it works through what queued up, then answers at once."""
        if self.process is not None:
            _signal_group(self.process.pid, signal.SIGCONT)
        self.paused = False

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the server's process group, SIGKILL it after ``grace_s``; its exit status.

        A paused server gets SIGCONT first, so that it can act on the SIGTERM.
        """
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGCONT)
            self.paused = False
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(grace_s)
        _signal_group(proc.pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return proc.returncode

    def logs(self, lines: int = 40) -> str:
        """The last lines of the server's output and log file."""
        out = []
        for path in (self.output_file, self.log_file):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            out.extend(text.splitlines()[-lines:])
        return "\n".join(out)

    def entry(self, server_id: str = "F", **extra: Any) -> dict[str, Any]:
        """This server's entry in a farm config (``servers`` list), with ``extra`` merged in."""
        return {
            "id": server_id,
            "ip": IP,
            "auth_port": self.auth_port,
            "status_port": self.status_port,
            "status_secret": {"file": str(self.status_secret_file)},
            "process": {"pid_file": str(self.pid_file)},
            "radiusd_conf": str(self.radiusd_conf),
            **extra,
        }

    def radclient(self, count: int, parallel: int) -> list[str]:
        """The argv of a radclient sending ``count`` Access-Requests, ``parallel`` at once."""
        program = require("radclient")
        return [
            program,
            "-q",
            "-c",
            str(count),
            "-p",
            str(parallel),
            f"{IP}:{self.auth_port}",
            "auth",
            self.client_secret,
        ]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


StartFreeRadius = Callable[..., Awaitable[FreeRadius]]


@pytest.fixture
def freeradius(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartFreeRadius]:
    """Start FreeRADIUS servers: ``await freeradius(max_servers=16, start_servers=4)``."""
    started: list[FreeRadius] = []

    async def start(**kwargs: Any) -> FreeRadius:
        require("freeradius")
        server = FreeRadius(tmp_path_factory.mktemp("raddb"), **kwargs)
        server.write()
        started.append(server)
        server.start()
        await server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()

"""A real FreeRADIUS for tests: its own raddb in a tmp dir, run unprivileged in the foreground.

The ``freeradius`` fixture is a factory: ``server = await freeradius()``
writes a raddb (PAP user ``alice``/``wonderland``, an auth and an acct
listener, and a Status-Server listener with its own secret, all on free
loopback ports), starts ``freeradius -f -d DIR`` in its own session and
waits until the status port answers. Every server it started is stopped at
teardown (SIGTERM to its process group, then SIGKILL); ``server.stop()``
stops one earlier. ``server.entry("F")`` is the server's entry for a farm
config. Register it for every test module with
``pytest_plugins = ["tests.support.freeradius"]`` in ``tests/conftest.py``.

``await freeradius(backend=True, max_servers=256, start_servers=4)`` adds a
slow backend: ``server.slow_backend(share=0.5, delay_s=4.0)`` makes that share
of Access-Requests wait that long in ``authorize`` (rlm_perl, one sleeping
thread each; Status-Server is still answered at once), ``server.slow_backend(0.0)``
ends it. ``server.pause()`` / ``server.resume()`` SIGSTOP / SIGCONT the server.

``await freeradius(eap=True)`` adds EAP as a WLAN controller's users meet it:
PEAP with inner EAP-MSCHAPv2 and TTLS with inner PAP, both for ``alice``, the
inner rounds run by an ``inner-tunnel`` virtual server (the modules and sections
of FreeRADIUS 3.2.1's raddb/mods-available/eap, sites-available/default and
inner-tunnel, cut to what these two need). Its TLS certificate is its own (an
EC P-256 key, see :class:`CertificateAuthority`), issued at write time by one
throwaway CA per test session, so that a supplicant trusting ``server.ca_file``
(the same file for every server of the session) verifies whichever server it
reaches; servers share nothing else but the client secret (no TLS session
cache). tests/support/eap.py runs ``eapol_test`` conversations against such a server,
directly or through a proxy.

``await freeradius(sign_replies=True)`` puts a Message-Authenticator in every
Access-Accept and Access-Reject, as FreeRADIUS 3.2.5 and later do against
BlastRADIUS; FreeRADIUS 3.2.1 signs only the replies EAP signs unless told to.

The ``freeradius_proxy`` fixture starts the usual practice in front of such
servers: ``await freeradius_proxy(homes=[a, b])``, a FreeRADIUS that proxies
every request to a fail-over ``home_server_pool`` of ``a`` then ``b``
(:class:`FreeRadiusProxy`, with its settings and why).

When FreeRADIUS is not installed the tests using it are skipped, except
when the environment variable ``CI`` is set: then they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet
from pyrad.dictionary import Dictionary

from services.launch.farm import free_udp_port
from services.radius.client import RadiusClient, RadiusTimeout, query_status
from services.radius.packet import DICTIONARY_PATH, STATUS_SERVER, reply_values
from tests.support import needs

IP = "127.0.0.1"
USER = "alice"
PASSWORD = "wonderland"
READY_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0


def require(program: str) -> str:
    """The path of ``program``; skip without it, or fail under CI (tests/support/needs.py)."""
    return needs.program(program, "Debian: apt-get install freeradius freeradius-utils")


_PATHS = """\
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
"""
"""Where a test server keeps everything: its own raddb directory."""

_LOG_SECURITY_POOL = """\
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

"""
"""Logging to a file, Status-Server on, the thread pool (its max_servers read by the collector)."""

_STATUS_SERVER = """\
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
"""The status virtual server the collector and the tests read statistics from."""

RADIUSD_CONF = (
    """\
# radiusd.conf written by tests/support/freeradius.py
"""
    + _PATHS
    + """\
# room for radclient's bursts; a finished request is kept (and only then counted
# in FreeRADIUS-Total-Auth-Responses) for cleanup_delay seconds
max_requests = 65536
cleanup_delay = 2

"""
    + _LOG_SECURITY_POOL
    + """\
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
{backend_module}{eap_module}}}

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
{backend_authorize}{eap_authorize}        files
        pap
    }}
    authenticate {{
        Auth-Type PAP {{
            pap
        }}
{eap_authenticate}    }}
    accounting {{
        detail
        ok
    }}
{eap_post_auth}}}
{inner_tunnel}
"""
    + _STATUS_SERVER
)

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

# EAP (FreeRadius(eap=True)), after FreeRADIUS 3.2.1's raddb/mods-available/eap,
# sites-available/default and sites-available/inner-tunnel, kept to PEAP with inner
# EAP-MSCHAPv2 and TTLS with inner PAP. What matters for conversations:
# - each round trip is one Access-Request; ``eap`` sets Auth-Type eap in ``authorize``
#   (``ok = return`` skips the rest), and in ``authenticate`` finds the session by the
#   request's State and EAP id (rlm_eap mem.c; a new source address only logs a warning
#   about a proxy fail-over). The session lives in rlm_eap's own list for
#   ``timer_expire`` seconds after its last round (60 s, as upstream), at most
#   ``max_sessions`` of them (${max_requests}, 65536 here, as upstream ties them); a
#   State this server did not issue (or has forgotten) gets an Access-Reject: "No EAP
#   session matching state".
# - ``cleanup_delay`` (2 s) only keeps a finished request to answer a retransmission
#   of that same packet (same source, id and authenticator); each round is a new
#   packet with a new id and authenticator, so it does not touch the conversation.
# - no TLS session cache (``cache { enable = no }``): resumption is another
#   conversation's business, and two servers share nothing but the client secret.
# - the inner ``mschap``/``pap`` run in ``inner-tunnel``; the outer reply carries the
#   MS-MPPE-Send-Key / -Recv-Key of the TLS tunnel (``use_tunneled_reply = no``
#   keeps inner attributes out of it).
# - ``default_eap_type = peap``: a TTLS supplicant answers the PEAP offer with a Nak
#   naming TTLS, one round trip more.
EAP_MODULE = """\
    mschap {{
    }}
    eap {{
        default_eap_type = peap
        timer_expire = 60
        ignore_unknown_eap_types = no
        cisco_accounting_username_bug = no
        max_sessions = ${{max_requests}}
        tls-config tls-common {{
            private_key_file = {certs}/server.key
            certificate_file = {certs}/server.pem
            ca_file = {certs}/ca.pem
            cipher_list = "DEFAULT"
            cipher_server_preference = no
            tls_min_version = "1.2"
            tls_max_version = "1.2"
            ecdh_curve = ""
            cache {{
                enable = no
            }}
        }}
        peap {{
            tls = tls-common
            default_eap_type = mschapv2
            copy_request_to_tunnel = no
            use_tunneled_reply = no
            virtual_server = "inner-tunnel"
        }}
        ttls {{
            tls = tls-common
            default_eap_type = mschapv2
            copy_request_to_tunnel = no
            use_tunneled_reply = no
            virtual_server = "inner-tunnel"
        }}
        mschapv2 {{
        }}
    }}
"""

EAP_AUTHORIZE = """\
        eap {
            ok = return
        }
"""

EAP_AUTHENTICATE = """\
        eap
"""

# an Access-Reject of a conversation carries an EAP-Failure (rlm_eap's post-auth)
EAP_POST_AUTH = """\
    post-auth {
        Post-Auth-Type REJECT {
            eap
        }
    }
"""

# FreeRADIUS(sign_replies=True): every Access-Accept and Access-Reject carries a
# Message-Authenticator, as FreeRADIUS 3.2.5 and later send them against BlastRADIUS
# (CVE-2024-3596). FreeRADIUS 3.2.1 signs only what EAP signs; an attribute
# Message-Authenticator in the reply is encoded first and computed when it is sent.
SIGNED_POST_AUTH = """\
    post-auth {{
        update reply {{
            &Message-Authenticator := 0x00
        }}
        Post-Auth-Type REJECT {{
{eap}            update reply {{
                &Message-Authenticator := 0x00
            }}
        }}
    }}
"""

INNER_TUNNEL = """
# the inner rounds of PEAP and TTLS: no listener, only the eap module calls it
server inner-tunnel {
    authorize {
        mschap
        eap {
            ok = return
        }
        files
        pap
    }
    authenticate {
        Auth-Type PAP {
            pap
        }
        Auth-Type MS-CHAP {
            mschap
        }
        eap
    }
}
"""

# The certificates (FreeRadius(eap=True)): EC P-256 keys, so that a CA and a server
# certificate take some 45 ms of openssl (an RSA 2048 key alone takes 0.2 s or more);
# FreeRADIUS and eapol_test (OpenSSL 3) take them with ECDHE-ECDSA in TLS 1.2. The
# server certificate carries extendedKeyUsage serverAuth, as raddb/certs/xpextensions
# asks for (Windows supplicants refuse a server certificate without it).
CERT_DAYS = 7
SERVER_EXTENSIONS = """\
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:{name}
"""


def _openssl(*args: str) -> None:
    program = needs.program("openssl", "Debian: apt-get install openssl")
    done = subprocess.run([program, *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({done.returncode}): {done.stderr}")


@dataclass(frozen=True)
class CertificateAuthority:
    """A throwaway CA in ``directory`` (``ca.pem``, ``ca.key``) that issues server certificates.

    ``CertificateAuthority.create(dir)`` makes one (one ``openssl req``);
    ``ca.issue(dir, name)`` writes ``dir/server.key`` and ``dir/server.pem`` for
    ``name`` (its CN and DNS subjectAltName) and a copy of ``ca.pem`` beside them.
    ``session_ca(tmp_path_factory)`` is the one CA of a test session.
    """

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def key(self) -> Path:
        return self.directory / "ca.key"

    @classmethod
    def create(cls, directory: Path) -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls(directory)
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(ca.key), "-out", str(ca.cert), "-days", str(CERT_DAYS),
            "-subj", "/O=aaa-failover tests/CN=throwaway test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        ca.key.chmod(0o600)
        return ca

    def issue(self, directory: Path, name: str) -> tuple[Path, Path]:
        """A new key and certificate for ``name`` in ``directory``: (server.pem, server.key)."""
        directory.mkdir(parents=True, exist_ok=True)
        key, csr, cert = (directory / n for n in ("server.key", "server.csr", "server.pem"))
        extensions = directory / "server.ext"
        extensions.write_text(SERVER_EXTENSIONS.format(name=name))
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", str(secrets.randbits(63)), "-days", str(CERT_DAYS),
            "-extfile", str(extensions), "-out", str(cert),
        )  # fmt: skip
        key.chmod(0o600)
        csr.unlink()
        shutil.copyfile(self.cert, directory / "ca.pem")
        return cert, key


_SESSION_CAS: dict[Path, CertificateAuthority] = {}


def session_ca(factory: pytest.TempPathFactory) -> CertificateAuthority:
    """The test session's one CA, made the first time it is asked for."""
    base = factory.getbasetemp()
    if base not in _SESSION_CAS:
        _SESSION_CAS[base] = CertificateAuthority.create(factory.mktemp("eap-ca"))
    return _SESSION_CAS[base]


BACKEND_SCRIPT = r"""# backend.pl of tests/support/freeradius.py: delays a share of Access-Requests
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
    eap: bool = False
    eap_ca: CertificateAuthority | None = None
    sign_replies: bool = False
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

    @property
    def certs_dir(self) -> Path:
        """Where an EAP server's certificate and key are (``server.pem``, ``server.key``)."""
        return self.directory / "certs"

    @property
    def ca_file(self) -> Path:
        """The CA certificate an EAP supplicant trusts to verify this server (eap=True)."""
        return self.certs_dir / "ca.pem"

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
                eap_module=EAP_MODULE.format(certs=self.certs_dir) if self.eap else "",
                eap_authorize=EAP_AUTHORIZE if self.eap else "",
                eap_authenticate=EAP_AUTHENTICATE if self.eap else "",
                eap_post_auth=self._post_auth(),
                inner_tunnel=INNER_TUNNEL if self.eap else "",
            )
        )
        (self.directory / "dictionary").write_text("")
        (self.directory / "users").write_text(f'{USER} Cleartext-Password := "{PASSWORD}"\n')
        if self.eap:
            if self.eap_ca is None:  # outside the fixture: a CA of its own
                self.eap_ca = CertificateAuthority.create(self.directory / "ca")
            self.eap_ca.issue(self.certs_dir, f"radius-{self.auth_port}.test")
        self.status_secret_file.write_text(self.status_secret + "\n")
        self.status_secret_file.chmod(0o600)
        if self.backend:
            (self.directory / "backend.pl").write_text(
                BACKEND_SCRIPT.format(control=self.backend_file)
            )
            self.slow_backend(0.0)

    def _post_auth(self) -> str:
        if self.sign_replies:
            return SIGNED_POST_AUTH.format(eap="            eap\n" if self.eap else "")
        return EAP_POST_AUTH if self.eap else ""

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


PROXY_CONF = (
    """\
# radiusd.conf of a FreeRADIUS proxy, written by tests/support/freeradius.py
"""
    + _PATHS
    + """\
max_requests = 65536
# a request is counted in the statistics once it is cleaned up, this long after its reply
cleanup_delay = {cleanup_delay}
proxy_requests = yes

"""
    + _LOG_SECURITY_POOL
    + """\
# the NAS devices
client nas {{
    ipaddr = 127.0.0.0/8
    secret = "{client_secret}"
}}

proxy server {{
    default_fallback = no
}}
{home_servers}
home_server_pool homes_auth {{
    type = fail-over
{auth_members}}}

home_server_pool homes_acct {{
    type = fail-over
{acct_members}}}

realm homes {{
    auth_pool = homes_auth
    acct_pool = homes_acct
}}

modules {{
    always ok {{
        rcode = ok
    }}
}}

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
        update control {{
            &Proxy-To-Realm := "homes"
        }}
    }}
    preacct {{
        update control {{
            &Proxy-To-Realm := "homes"
        }}
    }}
    authenticate {{
    }}
    accounting {{
        ok
    }}
}}

"""
    + _STATUS_SERVER
)

HOME_SERVER = """
home_server {name} {{
    type = {type}
    ipaddr = {ip}
    port = {port}
    secret = "{secret}"
    response_window = {response_window}
    response_timeouts = {response_timeouts}
    zombie_period = {zombie_period}
    revive_interval = {revive_interval}
    status_check = status-server
    check_interval = {check_interval}
    check_timeout = {check_timeout}
    num_answers_to_alive = {num_answers_to_alive}
    max_outstanding = 65536
}}
"""

# The FreeRADIUS statistics attributes a proxy adds (dictionary.freeradius of 3.2.1),
# beside those of the project's dictionary.
PROXY_STATS_DICTIONARY = """\
BEGIN-VENDOR	FreeRADIUS
ATTRIBUTE	FreeRADIUS-Total-Proxy-Access-Requests	138	integer
ATTRIBUTE	FreeRADIUS-Total-Proxy-Access-Accepts	139	integer
ATTRIBUTE	FreeRADIUS-Total-Proxy-Access-Rejects	140	integer
ATTRIBUTE	FreeRADIUS-Total-Proxy-Access-Challenges	141	integer
ATTRIBUTE	FreeRADIUS-Total-Proxy-Auth-Responses	142	integer
ATTRIBUTE	FreeRADIUS-Total-Proxy-Auth-Duplicate-Requests	143	integer
ATTRIBUTE	FreeRADIUS-Total-Proxy-Auth-Malformed-Requests	144	integer
ATTRIBUTE	FreeRADIUS-Total-Proxy-Auth-Invalid-Requests	145	integer
ATTRIBUTE	FreeRADIUS-Total-Proxy-Auth-Dropped-Requests	146	integer
ATTRIBUTE	FreeRADIUS-Total-Proxy-Auth-Unknown-Types	147	integer
ATTRIBUTE	FreeRADIUS-Total-Proxy-Accounting-Requests	155	integer
ATTRIBUTE	FreeRADIUS-Total-Proxy-Accounting-Responses	156	integer
ATTRIBUTE	FreeRADIUS-Stats-Server-IP-Address	170	ipaddr
ATTRIBUTE	FreeRADIUS-Stats-Server-Port	171	integer
ATTRIBUTE	FreeRADIUS-Stats-Server-Outstanding-Requests	172	integer
ATTRIBUTE	FreeRADIUS-Stats-Server-State	173	integer
ATTRIBUTE	FreeRADIUS-Stats-Server-Time-Of-Death	174	date
ATTRIBUTE	FreeRADIUS-Stats-Server-Time-Of-Life	175	date
ATTRIBUTE	FreeRADIUS-Stats-Last-Packet-Recv	184	date
ATTRIBUTE	FreeRADIUS-Stats-Last-Packet-Sent	185	date
END-VENDOR	FreeRADIUS
"""

STATISTICS_ALL = 0x1F
"""FreeRADIUS-Statistics-Type: auth, acct, proxy auth, proxy acct and internal."""
STATISTICS_HOME_SERVER_AUTH = 0x81
"""FreeRADIUS-Statistics-Type: one home server (Home-Server), with its auth counters."""

# FreeRADIUS-Stats-Server-State carries the home server's internal state, as
# src/include/realms.h of 3.2.1 numbers it (dictionary.freeradius names other
# values: Alive 0, Zombie 1, Dead 2, Idle 3, which do not match what 3.2.1 sends).
HOME_STATES = {0: "unknown", 1: "alive", 2: "zombie", 3: "dead", 4: "connection-fail", 5: "down"}


@functools.cache
def proxy_stats_dictionary() -> Dictionary:
    """The project's dictionary and a proxy's statistics attributes, loaded once."""
    return Dictionary(str(DICTIONARY_PATH), io.StringIO(PROXY_STATS_DICTIONARY))


@dataclass
class FreeRadiusProxy(FreeRadius):
    """A FreeRADIUS that proxies every Access- and Accounting-Request to ``homes``.

    The usual practice in front of a farm: NAS devices send to this server's
    ``auth_port`` / ``acct_port`` under ``client_secret`` (the NAS secret,
    also ``nas_secret``), and it forwards everything (``Proxy-To-Realm`` set in
    ``authorize`` and ``preacct``) to a ``home_server_pool`` of ``type =
    fail-over``: the first live home server in the order of ``homes``, each
    reached at its auth (acct) port under its ``client_secret``, with Status-
    Server checks. Its own statistics answer on ``status_port`` (``stats()``,
    ``home_server_stats()``).

    The home server settings follow raddb/proxy.conf of FreeRADIUS 3.2.1; where
    the aaa-failover agent's proxy has its own (services/runtime/config.py,
    ``ProxyConfig``), the same value is used when FreeRADIUS allows it:

    - ``response_window_s`` 2 (the agent's; proxy.conf's useful range is 5-60):
      a request unanswered that long is failed, and the home server turns
      zombie if it has answered nothing for ``(zombie_period + 3) // 4`` seconds;
    - ``zombie_period_s`` 20, the low end of proxy.conf's useful range (20-120):
      a zombie that answers no Status-Server within it is marked dead;
    - ``check_interval_s`` 6: the agent checks every 1 s, but FreeRADIUS forces
      anything under 6 up to 6 (realms.c); proxy.conf's useful range is 6-120;
    - ``check_timeout_s`` 1: the agent waits 0.5 s, FreeRADIUS's least is 1;
    - ``num_answers_to_alive`` 3, as the agent and proxy.conf; a dead home server
      needs that many answers, a zombie is alive again at its first;
    - ``revive_interval_s`` 120, proxy.conf's example; unused with Status-Server
      checks, which are on (``status_check = status-server``);
    - ``response_timeouts`` 1, FreeRADIUS's default;
    - ``cleanup_delay_s`` 5, FreeRADIUS's default: how long an answered request is
      kept to answer a NAS retransmission from cache; it is counted in the
      statistics only then.

    Out of bounds values raise ValueError rather than being silently forced by
    FreeRADIUS. What follows from them (src/main/process.c, realms.c): an
    Access-Request whose home server does not answer within the response window
    is answered with Access-Reject (FreeRADIUS's fail-safe default when no
    ``Post-Proxy-Type Fail`` section says otherwise), and a NAS retransmission
    never moves a request to another home server before that; a home server
    that falls silent is a zombie 5 to 6 s later (the whole seconds since its
    last answer must exceed ``(20 + 3) // 4``), and from then on new requests go
    to the next home server. A zombie that answers a Status-Server (sent every
    ``check_interval_s``, +/- 2 s) is alive again. A home server that answers
    some requests is never a zombie, however many others it leaves unanswered.
    """

    homes: list[FreeRadius] = field(default_factory=list)
    response_window_s: float = 2.0
    response_timeouts: int = 1
    zombie_period_s: int = 20
    revive_interval_s: int = 120
    check_interval_s: int = 6
    check_timeout_s: int = 1
    num_answers_to_alive: int = 3
    cleanup_delay_s: int = 5

    def __post_init__(self) -> None:
        if not self.homes:
            raise ValueError("a proxy needs at least one home server")
        if self.backend:
            raise ValueError("a proxy has no backend of its own")
        if self.eap:
            raise ValueError("a proxy passes EAP on to its home servers: it has no eap of its own")
        bounds = {
            "response_timeouts": (self.response_timeouts, 1, 1000),
            "zombie_period_s": (self.zombie_period_s, max(1, int(self.response_window_s)), 120),
            "revive_interval_s": (self.revive_interval_s, 10, 3600),
            "check_interval_s": (self.check_interval_s, 6, 120),
            "check_timeout_s": (self.check_timeout_s, 1, 10),
            "num_answers_to_alive": (self.num_answers_to_alive, 3, 10),
            "cleanup_delay_s": (self.cleanup_delay_s, 1, 30),
        }
        for name, (value, low, high) in bounds.items():
            if not low <= value <= high:
                raise ValueError(f"{name} = {value}: FreeRADIUS 3.2 takes {low} to {high}")
        if not 0.001 <= self.response_window_s <= 60:
            raise ValueError(f"response_window_s = {self.response_window_s}: 0.001 to 60")

    @property
    def nas_secret(self) -> str:
        """The secret NAS devices share with this proxy (its ``client_secret``)."""
        return self.client_secret

    @staticmethod
    def home_name(index: int) -> str:
        """The name of ``homes[index]`` in the proxy's config: A, B, C, ..."""
        return chr(ord("A") + index)

    def write(self) -> None:
        """Write the raddb: radiusd.conf with home servers, pools and realm; the secret."""
        for sub in ("log", "run", "radacct"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        settings = {
            "ip": IP,
            "response_window": f"{self.response_window_s:g}",
            "response_timeouts": self.response_timeouts,
            "zombie_period": self.zombie_period_s,
            "revive_interval": self.revive_interval_s,
            "check_interval": self.check_interval_s,
            "check_timeout": self.check_timeout_s,
            "num_answers_to_alive": self.num_answers_to_alive,
        }
        blocks, auth_members, acct_members = [], [], []
        for index, home in enumerate(self.homes):
            name = self.home_name(index)
            for kind, port, members, suffix in (
                ("auth", home.auth_port, auth_members, ""),
                ("acct", home.acct_port, acct_members, "-acct"),
            ):
                blocks.append(
                    HOME_SERVER.format(
                        name=name + suffix,
                        type=kind,
                        port=port,
                        secret=home.client_secret,
                        **settings,
                    )
                )
                members.append(f"    home_server = {name}{suffix}\n")
        self.radiusd_conf.write_text(
            PROXY_CONF.format(
                dir=self.directory,
                ip=IP,
                auth_port=self.auth_port,
                acct_port=self.acct_port,
                status_port=self.status_port,
                client_secret=self.client_secret,
                status_secret=self.status_secret,
                max_servers=self.max_servers,
                start_servers=self.start_servers,
                cleanup_delay=self.cleanup_delay_s,
                home_servers="".join(blocks),
                auth_members="".join(auth_members),
                acct_members="".join(acct_members),
            )
        )
        (self.directory / "dictionary").write_text("")
        self.status_secret_file.write_text(self.status_secret + "\n")
        self.status_secret_file.chmod(0o600)

    async def _statistics(self, flags: int, timeout_s: float, **attributes: Any) -> dict[str, Any]:
        secret = self.status_secret.encode()
        pkt = packet.AuthPacket(code=STATUS_SERVER, secret=secret, dict=proxy_stats_dictionary())
        pkt["FreeRADIUS-Statistics-Type"] = flags
        for name, value in attributes.items():
            pkt[name] = value
        pkt.add_message_authenticator()
        client = await RadiusClient.open((IP, self.status_port), secret)
        try:
            reply = await client.send(pkt, timeout_s=timeout_s)
        finally:
            client.close()
        return reply_values(reply)

    async def stats(self, timeout_s: float = 1.0) -> dict[str, Any]:
        """The proxy's Status-Server statistics: its own counters and the proxied ones
        (``FreeRADIUS-Total-Proxy-Access-Requests``, ...). Raises RadiusTimeout."""
        return await self._statistics(STATISTICS_ALL, timeout_s)

    async def home_server_stats(self, home: FreeRadius, timeout_s: float = 1.0) -> dict[str, Any]:
        """What the proxy knows of ``home`` as an auth home server: what it proxied there
        (``FreeRADIUS-Total-Proxy-Access-Requests``, ``-Accepts``, ...), requests outstanding,
        and ``state`` (unknown until used, alive, zombie, dead, ...). Raises RadiusTimeout."""
        values = await self._statistics(
            STATISTICS_HOME_SERVER_AUTH,
            timeout_s,
            **{
                "FreeRADIUS-Stats-Server-IP-Address": IP,
                "FreeRADIUS-Stats-Server-Port": home.auth_port,
            },
        )
        raw = values.get("FreeRADIUS-Stats-Server-State")
        values["state"] = HOME_STATES.get(raw, f"state {raw}") if raw is not None else None
        return values


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


StartFreeRadius = Callable[..., Awaitable[FreeRadius]]


@pytest.fixture
def freeradius(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartFreeRadius]:
    """Start FreeRADIUS servers: ``await freeradius(max_servers=16, start_servers=4)``;
    ``eap=True`` gives each its own certificate from the session's CA (``session_ca``)."""
    started: list[FreeRadius] = []

    async def start(**kwargs: Any) -> FreeRadius:
        require("freeradius")
        if kwargs.get("eap") and kwargs.get("eap_ca") is None:
            kwargs["eap_ca"] = session_ca(tmp_path_factory)
        server = FreeRadius(tmp_path_factory.mktemp("raddb"), **kwargs)
        server.write()
        started.append(server)
        server.start()
        await server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


StartFreeRadiusProxy = Callable[..., Awaitable[FreeRadiusProxy]]


@pytest.fixture
def freeradius_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartFreeRadiusProxy]:
    """Start FreeRADIUS proxies: ``await freeradius_proxy(homes=[a, b], response_window_s=2)``,
    ``a`` and ``b`` started by the ``freeradius`` fixture."""
    started: list[FreeRadiusProxy] = []

    async def start(**kwargs: Any) -> FreeRadiusProxy:
        require("freeradius")
        proxy = FreeRadiusProxy(tmp_path_factory.mktemp("raddb-proxy"), **kwargs)
        proxy.write()
        started.append(proxy)
        proxy.start()
        await proxy.wait_ready()
        return proxy

    yield start
    for proxy in started:
        proxy.stop()

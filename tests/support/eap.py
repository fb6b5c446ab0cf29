"""EAP conversations from a real supplicant: ``eapol_test`` (wpa_supplicant 2.10, Debian's
``eapoltest`` package), run as asyncio subprocesses, one per conversation.

``eapol_test`` plays a NAS with one user's device behind it: it sends the
device's EAP in Access-Requests to a RADIUS server (or a proxy) and follows
the Access-Challenges, carrying their ``State``, until an Access-Accept or
Access-Reject. A PEAP or TTLS conversation is several round trips (PEAP with
inner MSCHAPv2 against ``FreeRadius(eap=True)``: 9; TTLS with inner PAP: 6,
one of them the Nak to the server's PEAP offer).

Use::

    from tests.support.eap import Supplicant, converse, converse_many

    server = await freeradius(eap=True)
    peap = Supplicant("PEAP", ca_cert=server.ca_file)
    result = await converse(server.auth_address, server.client_secret, peap, tmp_path)
    assert result.success and result.keys_match, result.tail()

    results = await converse_many(address, secret, peap, tmp_path, count=16)

A conversation can also be watched while it runs, to act between its rounds
(leaving the block kills an eapol_test still running)::

    async with await start(address, secret, peap, tmp_path) as running:
        await running.until_round(3)   # three replies received, the fourth request goes out
        ...                            # e.g. publish a failover notice
        result = await running.result()

``start_many`` starts several at once and returns their :class:`Running`.

What a :class:`Supplicant` is set up with becomes one wpa_supplicant network
block (``network_block()``): PEAP with ``phase2="auth=MSCHAPV2"`` or TTLS
with ``phase2="auth=PAP"``, user ``alice``/``wonderland`` by default, an
optional ``anonymous_identity`` (the outer User-Name), and ``ca_cert``: the
CA file to verify the server's certificate with (``FreeRadius.ca_file``,
one CA for every server of a test session, so a conversation may be verified
whichever home server it reaches), or None to take any server certificate.
Each conversation has its own station MAC (Calling-Station-Id), so that
parallel ones look like different devices.

What a run shows (:class:`EapResult`): ``success`` (exit status 0 and the
final ``SUCCESS``), the reply codes in order (``replies``) and so the number
of ``round_trips``; ``retransmissions`` (eapol_test resends an unanswered
Access-Request after 3 s, then 6 s after that, ...: its RADIUS client's own timer, not
an option); the MSK the supplicant derived (``msk``) and the one the server
sent in MS-MPPE-Recv-Key and MS-MPPE-Send-Key (``server_msk``, as eapol_test
decrypted them with the secret it shares with what it talks to: through a
proxy, the proxy re-encrypts them), eapol_test's own verdict on them
(``mppe_ok``/``mppe_mismatch``: it compares the first 32 octets, the PMK), and
``keys_match``: all of it agrees. ``tail()`` is the end of the output for
failure messages; ``output`` all of it.

eapol_test has no option to delay its rounds. To make a conversation slow,
delay the server: ``FreeRadius(backend=True, eap=True)`` then
``server.slow_backend(1.0, delay_s)`` delays every Access-Request in
``authorize`` before ``eap`` runs, so every round trip of a conversation, by
``delay_s`` (the inner-tunnel rounds are not requests of their own). Keep
``delay_s`` under 3 s, or eapol_test retransmits (the server drops a
duplicate of a request it is still working on, so the conversation goes on).

``eapol_test`` comes from tests/support/needs.py's ``program``: the tests skip
without it, and fail under CI, where ``.ci/run`` installs it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.support import needs

Method = Literal["PEAP", "TTLS"]

USER = "alice"
PASSWORD = "wonderland"
TIMEOUT_S = 10.0
"""eapol_test's own limit on one conversation (``-t``)."""
KILL_GRACE_S = 5.0
"""How long past its own limit an eapol_test may run before it is killed."""
OUTPUT_LIMIT = 1 << 20
"""eapol_test's longest line: the hexdump of a 1,000-octet EAP packet is 3,000 characters."""

PHASE2: dict[Method, str] = {"PEAP": "auth=MSCHAPV2", "TTLS": "auth=PAP"}

_REPLY_CODE = re.compile(r"^RADIUS message: code=\d+ \(([\w-]+)\)")
_DERIVED_KEY = re.compile(r"^EAP-\w+: Derived key - hexdump\(len=\d+\):((?: [0-9a-f]{2})+)")
_SERVER_KEY = re.compile(
    r"^\s*MS-MPPE-(Send|Recv)-Key \(\w+\) - hexdump\(len=\d+\):((?: [0-9a-f]{2})+)"
)
_MPPE = re.compile(r"^MPPE keys OK: (\d+)\s+mismatch: (\d+)")


def eapol_test_program() -> str:
    return needs.program("eapol_test", "Debian: apt-get install eapoltest")


def station_mac(index: int) -> str:
    """A locally administered MAC for the ``index``-th device: 02:00:00:00:00:01, ..."""
    if not 0 <= index < 1 << 40:
        raise ValueError(f"station index {index} out of range")
    octets = (index + 1).to_bytes(5, "big")
    return "02:" + ":".join(f"{b:02x}" for b in octets)


@dataclass(frozen=True)
class Supplicant:
    """How a user's device is set up: one wpa_supplicant network block."""

    method: Method = "PEAP"
    identity: str = USER
    password: str = PASSWORD
    anonymous_identity: str | None = None
    ca_cert: Path | None = None
    mac: str = field(default_factory=lambda: station_mac(0))

    def __post_init__(self) -> None:
        if self.method not in PHASE2:
            raise ValueError(f"method must be one of {sorted(PHASE2)}, not {self.method!r}")
        for name in ("identity", "password", "anonymous_identity"):
            value = getattr(self, name)
            if value is not None and ('"' in value or "\n" in value):
                raise ValueError(f"{name} may not hold a double quote or a newline")

    def network_block(self) -> str:
        lines = [
            "key_mgmt=WPA-EAP",
            f"eap={self.method}",
            f'identity="{self.identity}"',
            f'password="{self.password}"',
            f'phase2="{PHASE2[self.method]}"',
        ]
        if self.anonymous_identity is not None:
            lines.append(f'anonymous_identity="{self.anonymous_identity}"')
        if self.ca_cert is not None:
            lines.append(f'ca_cert="{self.ca_cert}"')
        return "network={\n" + "".join(f"    {line}\n" for line in lines) + "}\n"


def _hex(dump: str) -> bytes:
    return bytes.fromhex(dump.replace(" ", ""))


@dataclass
class EapResult:
    """How one eapol_test conversation went."""

    code: int
    """eapol_test's exit status: 0 on success."""
    output: str
    seconds: float
    replies: list[str] = field(default_factory=list)
    """The code of every reply matched to a request, in order: Access-Challenge, ..."""
    reply_at: list[float] = field(default_factory=list)
    """When each of ``replies`` came, in seconds since eapol_test was started."""
    retransmissions: int = 0
    msk: bytes | None = None
    """The MSK the supplicant derived (64 octets), None if it derived none."""
    server_recv_key: bytes | None = None
    server_send_key: bytes | None = None
    mppe_ok: int = 0
    mppe_mismatch: int = 0
    timed_out: bool = False
    """eapol_test did not finish within its limit plus KILL_GRACE_S and was killed."""

    @property
    def success(self) -> bool:
        lines = self.output.rstrip().splitlines()
        return self.code == 0 and bool(lines) and lines[-1] == "SUCCESS"

    @property
    def round_trips(self) -> int:
        return len(self.replies)

    @property
    def outcome(self) -> str | None:
        """The last reply: Access-Accept, Access-Reject, or Access-Challenge if it stopped."""
        return self.replies[-1] if self.replies else None

    @property
    def server_msk(self) -> bytes | None:
        """The MSK as the server sent it: MS-MPPE-Recv-Key then MS-MPPE-Send-Key (RFC 5216)."""
        if self.server_recv_key is None or self.server_send_key is None:
            return None
        return self.server_recv_key + self.server_send_key

    @property
    def keys_match(self) -> bool:
        """Both sides hold the same MSK, and eapol_test's own check of the PMK agrees."""
        return (
            self.msk is not None
            and self.msk == self.server_msk
            and self.mppe_ok >= 1
            and self.mppe_mismatch == 0
        )

    def tail(self, lines: int = 25) -> str:
        """The end of the output, lines of hexdump left out: what to show when it failed."""
        kept = [line for line in self.output.splitlines() if "hexdump" not in line]
        head = (
            f"eapol_test exit {self.code} after {self.seconds:.2f}s, replies {self.replies}, "
            f"{self.retransmissions} retransmissions{', killed' if self.timed_out else ''}"
        )
        return "\n".join([head, *kept[-lines:]])


class Reader:
    """Reads eapol_test's output line by line into an :class:`EapResult`."""

    def __init__(self, result: EapResult) -> None:
        self.result = result
        self._receiving = False
        self._code = "?"

    def feed(self, line: str, at: float) -> None:
        """One line of output, ``at`` seconds after eapol_test was started."""
        result = self.result
        if line.startswith("Received RADIUS message"):
            self._receiving = True
        elif self._receiving and (found := _REPLY_CODE.match(line)):
            self._code, self._receiving = found.group(1), False
        elif "Received RADIUS packet matched with a pending request" in line:
            result.replies.append(self._code)
            result.reply_at.append(at)
            self._code = "?"
        elif "Resending RADIUS message" in line:
            result.retransmissions += 1
        elif found := _DERIVED_KEY.match(line):
            result.msk = _hex(found.group(1))
        elif found := _SERVER_KEY.match(line):
            if found.group(1) == "Recv":
                result.server_recv_key = _hex(found.group(2))
            else:
                result.server_send_key = _hex(found.group(2))
        elif found := _MPPE.match(line):
            result.mppe_ok, result.mppe_mismatch = int(found.group(1)), int(found.group(2))


def parse(output: str, code: int = 0, seconds: float = 0.0) -> EapResult:
    """An :class:`EapResult` from the whole output of a finished eapol_test."""
    result = EapResult(code=code, output=output, seconds=seconds)
    reader = Reader(result)
    for line in output.splitlines():
        reader.feed(line, seconds)
    return result


class Running:
    """One eapol_test conversation under way: its rounds can be waited for as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, started: float, limit_s: float) -> None:
        self._proc = proc
        self._started = started
        self._limit_s = limit_s
        self._lines: list[str] = []
        self._result = EapResult(code=-1, output="", seconds=0.0)
        self._reader = Reader(self._result)
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._follow())

    @property
    def rounds(self) -> int:
        """Replies received so far."""
        return self._result.round_trips

    async def _follow(self) -> EapResult:
        result = self._result
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(self._limit_s):
                while raw := await stdout.readline():
                    line = raw.decode(errors="replace").rstrip("\n")
                    self._lines.append(line)
                    before = result.round_trips
                    self._reader.feed(line, time.monotonic() - self._started)
                    if result.round_trips != before:
                        self._changed.set()
                result.code = await self._proc.wait()
        except TimeoutError:
            result.timed_out = True
        finally:
            if self._proc.returncode is None:
                self._proc.kill()
                result.code = await self._proc.wait()
            result.seconds = time.monotonic() - self._started
            result.output = "\n".join(self._lines) + "\n"
            self._changed.set()
        return result

    async def until_round(self, count: int, timeout_s: float = TIMEOUT_S) -> None:
        """Wait until ``count`` replies have come; AssertionError if it ends before."""
        async with asyncio.timeout(timeout_s):
            while self.rounds < count:
                if self._task.done():
                    raise AssertionError(
                        f"the conversation ended after {self.rounds} rounds, not {count}:\n"
                        + self._task.result().tail()
                    )
                self._changed.clear()
                await self._changed.wait()

    async def result(self) -> EapResult:
        """The conversation's outcome, once eapol_test has exited."""
        return await asyncio.shield(self._task)

    async def kill(self) -> None:
        """Kill eapol_test if it still runs, and wait until it has exited."""
        if self._proc.returncode is None:
            self._proc.kill()
        await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> Running:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()


def write_config(supplicant: Supplicant, directory: Path, name: str | None = None) -> Path:
    """Write ``supplicant``'s network block to ``directory/<name>.conf``; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    name = name or f"eap-{supplicant.method.lower()}-{supplicant.mac.replace(':', '')}"
    conf = directory / f"{name}.conf"
    conf.write_text(supplicant.network_block())
    return conf


async def start(
    address: tuple[str, int],
    secret: str,
    supplicant: Supplicant,
    directory: Path,
    *,
    timeout_s: float = TIMEOUT_S,
    name: str | None = None,
) -> Running:
    """Start one conversation with the RADIUS server (or proxy) at ``address``.

    The network block goes to ``directory/<name>.conf`` (``name`` defaults to
    ``eap-<method>-<mac>``). eapol_test runs with ``-r 0`` (no
    re-authentication) and ``-t timeout_s``, its output line-buffered through
    ``stdbuf`` so that rounds are seen as they happen.
    """
    program = eapol_test_program()
    stdbuf = needs.program("stdbuf", "Debian: apt-get install coreutils")
    conf = write_config(supplicant, directory, name)
    ip, port = address
    argv = [stdbuf, "-oL", "-eL", program, "-c", str(conf), "-a", ip, "-p", str(port)]
    argv += ["-s", secret, "-r", "0", "-t", f"{max(1, round(timeout_s))}", "-M", supplicant.mac]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        limit=OUTPUT_LIMIT,
    )
    return Running(proc, started, timeout_s + KILL_GRACE_S)


async def converse(
    address: tuple[str, int],
    secret: str,
    supplicant: Supplicant,
    directory: Path,
    *,
    timeout_s: float = TIMEOUT_S,
) -> EapResult:
    """Run one conversation to its end."""
    running = await start(address, secret, supplicant, directory, timeout_s=timeout_s)
    try:
        return await running.result()
    finally:
        await running.kill()


async def start_many(
    address: tuple[str, int],
    secret: str,
    supplicants: Supplicant | Sequence[Supplicant],
    directory: Path,
    *,
    count: int | None = None,
    timeout_s: float = TIMEOUT_S,
) -> list[Running]:
    """Start conversations at once, each its own eapol_test process.

    Either a list of supplicants, or one and ``count``: then the ``i``-th is a
    copy of it with MAC ``station_mac(i)``.
    """
    if isinstance(supplicants, Supplicant):
        if count is None:
            raise ValueError("give count with one supplicant")
        supplicants = [dataclasses.replace(supplicants, mac=station_mac(i)) for i in range(count)]
    elif count is not None and count != len(supplicants):
        raise ValueError(f"count {count} but {len(supplicants)} supplicants")
    macs = [s.mac for s in supplicants]
    if len(set(macs)) != len(macs):
        raise ValueError("each conversation needs its own station MAC")
    started: list[Running] = []
    try:
        for supplicant in supplicants:
            started.append(await start(address, secret, supplicant, directory, timeout_s=timeout_s))
    except BaseException:
        await asyncio.gather(*(r.kill() for r in started))
        raise
    return started


async def converse_many(
    address: tuple[str, int],
    secret: str,
    supplicants: Supplicant | Sequence[Supplicant],
    directory: Path,
    *,
    count: int | None = None,
    timeout_s: float = TIMEOUT_S,
) -> list[EapResult]:
    """Run conversations in parallel (see ``start_many``), their results in the same order."""
    started = await start_many(
        address, secret, supplicants, directory, count=count, timeout_s=timeout_s
    )
    try:
        return list(await asyncio.gather(*(r.result() for r in started)))
    finally:
        await asyncio.gather(*(r.kill() for r in started))

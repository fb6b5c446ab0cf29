"""The compose stack for real: images built, every service in a container, one incident.

`make containers` runs this module after ``../shared/containers/setup-podman.sh``
has prepared podman (it exports ``CONTAINERS_CONF`` and puts ``podman-compose``
on PATH). Without that the module is skipped; with it, every problem fails it,
under CI as anywhere else.

The stack is ``compose/docker-compose.yml`` with the ``demo`` profile and two
notifier replicas, as the project ``aaa-failover-e2e``, on the host network.
Every service container must hold exactly the secret files its process reads
(services/launch/reads.py): its own signing key, the keys it verifies, and
the shared key only in the reference servers.
The test watches the bus from the host with the keys of ``compose/farm.toml``
(the secrets ``compose/make-secrets.sh`` wrote), stalls most of server A's
workers with a ServerControl as ``aaa-failover demo`` does, and asserts that
A's clients moved to B and C, and that once A recovered they came back in
readmission waves and A's incident closed. At the end the stack is taken down
(``down -v -t 2``) and nothing of the project may be left. Each step's time is
printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from schemas.events import (
    Ack,
    ClientStatus,
    Delivery,
    FailoverPlan,
    HealthReport,
    Incident,
    MetricsSample,
    ReadmitWave,
    ServerControl,
)
from services.launch import reads
from services.runtime.bus import Bus, Keyring
from services.runtime.config import Config, load_config
from tests.support.helpers import Recorder

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
FARM = COMPOSE_DIR / "farm.toml"
PROJECT = "aaa-failover-e2e"
PROFILE = "demo"
NOTIFIERS = 2
NATS_PORT = 14222
APP_IMAGE = "localhost/aaa-failover:latest"
RADIUS_IMAGE = "localhost/aaa-failover-freeradius:latest"
BUILDER_IMAGE = "localhost/aaa-failover-builder:latest"
STAGE_LABEL = "io.aaa-failover.stage"
OVERLOADED = "A"
SERVICES = (
    "nats",
    "freeradius",
    "evaluator",
    "targeter",
    "readmitter",
    "notifier",
    "collector",
    "aaa-a",
    "aaa-b",
    "aaa-c",
    "agent-1",
    "agent-2",
    "agent-3",
)
CONTAINERS = len(SERVICES) + NOTIFIERS - 1
LIST_SECRETS = (
    "import os\n"
    "top = '/etc/aaa-failover'\n"
    "for d, _, files in os.walk(top + '/secrets'):\n"
    "    for f in files:\n"
    "        print(os.path.relpath(os.path.join(d, f), top))\n"
)
"""Prints every secret file of a container, relative to its config's folder."""

pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True)
class Tools:
    """The prepared podman and podman-compose, and the base image to build from."""

    podman: str
    compose: str
    base_image: str


def _tools() -> Tools:
    """The tools, or skip (podman not prepared here); fail when prepared only in part."""
    if not os.environ.get("CONTAINERS_CONF"):
        pytest.skip(
            "podman is not prepared: run `make containers` "
            "(it runs ../shared/containers/setup-podman.sh first)"
        )
    podman = shutil.which("podman")
    compose = os.environ.get("PODMAN_COMPOSE") or shutil.which("podman-compose")
    if podman is None or compose is None or not os.access(compose, os.X_OK):
        pytest.fail(f"CONTAINERS_CONF is set but podman ({podman}) or podman-compose is missing")
    return Tools(podman, compose, os.environ.get("PODMAN_BASE_IMAGE", "python:3.12-slim"))


def _run(argv: list[str], timeout_s: float, *, check: bool = True) -> str:
    """Run ``argv`` and return its output; fail with its tail if it fails."""
    status, output = _status(argv, timeout_s)
    if check and status != 0:
        pytest.fail(f"{' '.join(argv)} exited {status}:\n{output[-3000:]}")
    return output


def _status(argv: list[str], timeout_s: float) -> tuple[int, str]:
    """Run ``argv``; its exit status and output (stdout and stderr)."""
    try:
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env={**os.environ, "AAA_NOTIFIER_REPLICAS": str(NOTIFIERS)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else ""
        pytest.fail(f"{' '.join(argv)} did not finish in {timeout_s:.0f}s:\n{output[-3000:]}")
    return done.returncode, done.stdout


@dataclass
class Stack:
    """The running stack: its tools, its config as the host sees it, and the step times."""

    tools: Tools
    config: Config
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str) -> list[str]:
        return [
            self.tools.compose,
            "-f",
            str(COMPOSE_FILE),
            "-p",
            PROJECT,
            "--profile",
            PROFILE,
            *args,
        ]

    def podman(self, *args: str) -> list[str]:
        return [self.tools.podman, *args]

    def containers(self, *, every: bool = False) -> list[str]:
        """Names of the project's containers (running ones, or every one)."""
        out = _run(
            self.podman(
                "ps",
                *(["--all"] if every else []),
                "--filter",
                f"label=com.docker.compose.project={PROJECT}",
                "--format",
                "{{.Names}}",
            ),
            60,
        )
        return sorted(line for line in out.split() if line)

    def volumes(self) -> list[str]:
        out = _run(self.podman("volume", "ls", "--format", "{{.Name}}"), 60)
        return sorted(v for v in out.split() if v.startswith(f"{PROJECT}_"))

    def pods(self) -> list[str]:
        out = _run(self.podman("pod", "ls", "--format", "{{.Name}}"), 60)
        return sorted(p for p in out.split() if PROJECT in p)

    def logs(self, lines: int = 25) -> str:
        """The last lines of every container's log, for a failure's report."""
        parts = []
        for name in self.containers(every=True):
            out = _run(self.podman("logs", "--tail", str(lines), name), 60, check=False)
            parts.append(f"--- {name}\n{out.rstrip()}")
        return "\n".join(parts)


def _say(text: str) -> None:
    print(f"[containers] {text}", flush=True)


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    tools = _tools()
    started = time.monotonic()
    _run(["sh", str(COMPOSE_DIR / "make-secrets.sh")], 60)
    stack = Stack(tools, load_config(FARM))

    # The compose file as podman-compose reads it: every service of the profile.
    rendered = _run(stack.compose("config"), 120)
    missing = [s for s in SERVICES if f"\n  {s}:" not in rendered]
    assert not missing, f"podman-compose config lacks {missing}:\n{rendered[-2000:]}"

    # Whatever an interrupted earlier run left, then a free port for the bus.
    _run(stack.compose("down", "-v", "-t", "2", "--remove-orphans"), 180, check=False)
    assert not _port_taken(NATS_PORT), (
        f"127.0.0.1:{NATS_PORT} is taken: another stack runs here (podman ps)"
    )

    begin = time.monotonic()
    builds: tuple[tuple[str, Path, list[str]], ...] = (
        (BUILDER_IMAGE, ROOT, ["--target=builder"]),
        (APP_IMAGE, ROOT, []),
        (RADIUS_IMAGE, COMPOSE_DIR / "freeradius", []),
    )
    for image, context, extra in builds:
        _run(
            stack.podman(
                "build",
                "--format=docker",
                "--network=host",
                f"--build-arg=BASE_IMAGE={tools.base_image}",
                *extra,
                "-t",
                image,
                str(context),
            ),
            900,
        )
    # The builder stage stays tagged as the next build's cache; what earlier builds
    # left untagged goes, so that repeated runs on one machine do not fill its disk.
    _run(stack.podman("image", "prune", "--force", "--filter", f"label={STAGE_LABEL}"), 300)
    stack.timings["build"] = time.monotonic() - begin
    _say(f"images built in {stack.timings['build']:.1f}s")

    try:
        begin = time.monotonic()
        _run(stack.compose("up", "-d", "--no-build"), 300)
        stack.timings["up"] = time.monotonic() - begin
        _say(f"{len(stack.containers())} containers created in {stack.timings['up']:.1f}s")
        yield stack
    finally:
        begin = time.monotonic()
        _run(stack.compose("down", "-v", "-t", "2", "--remove-orphans"), 300)
        stack.timings["down"] = time.monotonic() - begin
        stack.timings["total"] = time.monotonic() - started
        _say(", ".join(f"{step} {secs:.1f}s" for step, secs in stack.timings.items()))
        left = stack.containers(every=True)
        volumes = stack.volumes()
        pods = stack.pods()
        assert not (left or volumes or pods), (
            f"left behind: containers {left}, volumes {volumes}, pods {pods}"
        )


def test_every_service_runs_in_its_container_and_is_healthy(stack: Stack) -> None:
    deadline = time.monotonic() + 90
    unhealthy: dict[str, str] = {}
    while True:
        names = stack.containers()
        unhealthy = {}
        for name in names:
            status, out = _status(stack.podman("healthcheck", "run", name), 30)
            if status != 0:
                unhealthy[name] = out.strip()[-300:] or f"exit {status}"
        if len(names) == CONTAINERS and not unhealthy:
            break
        if time.monotonic() > deadline:
            pytest.fail(
                f"{len(names)} of {CONTAINERS} containers running; unhealthy: {unhealthy}\n"
                + stack.logs()
            )
        time.sleep(2)
    assert sum(1 for n in names if "_notifier_" in n) == NOTIFIERS
    stack.timings["healthy"] = time.monotonic() - deadline + 90
    _say(f"all {CONTAINERS} containers healthy")

    # Non-root, with the config read-only, and an agent without the bus key.
    agent = next(n for n in names if "_agent-1_" in n)
    assert _run(stack.podman("exec", agent, "id", "-u"), 30).strip() != "0"
    denied = _run(
        stack.podman("exec", agent, "sh", "-c", "echo x >> /etc/aaa-failover/farm.toml"),
        30,
        check=False,
    )
    assert "Read-only" in denied or "Permission denied" in denied, denied
    secrets = _run(stack.podman("exec", agent, "ls", "/etc/aaa-failover/secrets"), 30)
    assert secrets.split() == ["client-nas-01", "client-nas-02", "nats", "tls"]
    # its own NATS user's password alone, and the CA of the bus's TLS
    users = _run(stack.podman("exec", agent, "ls", "/etc/aaa-failover/secrets/nats"), 30)
    assert users.split() == ["agent-1"]
    tls = _run(stack.podman("exec", agent, "ls", "/etc/aaa-failover/secrets/tls"), 30)
    assert tls.split() == ["ca.pem"]

    # Every service container holds exactly the secret files its process reads.
    checked = []
    for name in names:
        argv = json.loads(
            _run(stack.podman("inspect", "--format", "{{json .Config.Cmd}}", name), 30)
        )
        if argv[:1] != ["run"]:
            continue
        service = argv[1]
        only = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--only"]
        held = _run(stack.podman("exec", name, "python", "-c", LIST_SECRETS), 30).split()
        checked.append(name)
        assert sorted(held) == sorted(reads.files_read(stack.config, service, only)), name
    # every container but NATS and FreeRADIUS runs a service
    assert len(checked) == CONTAINERS - 2, (checked, names)


async def _watch(stack: Stack, exits: AsyncExitStack, recorder: Recorder) -> Bus:
    bus = await asyncio.wait_for(
        Bus.connect(
            stack.config.bus,
            Keyring.from_config(stack.config),
            name="containers-e2e",
            stack=exits,
            url=f"nats://127.0.0.1:{NATS_PORT}",
        ),
        60,
    )
    await bus.subscribe(
        bus.subjects.all,
        recorder.on_event,
        types=(
            Incident,
            FailoverPlan,
            Ack,
            ReadmitWave,
            ClientStatus,
            Delivery,
            MetricsSample,
            HealthReport,
        ),
        accept_clients=True,
    )
    await bus.nc.flush()
    return bus


async def test_freeradius_is_watched_through_its_status_server(stack: Stack) -> None:
    recorder = Recorder()
    async with AsyncExitStack() as exits:
        await _watch(stack, exits, recorder)

        def sampled() -> bool:
            return any(
                s.server == "F" and s.status_ok and s.process_threads is not None
                for s in recorder.of(MetricsSample)
            )

        await recorder.until(sampled, 60, "a sample of FreeRADIUS with its process figures")
        await recorder.until(
            lambda: any(
                r.server == "F" and r.health >= r.connection_threshold
                for r in recorder.of(HealthReport)
            ),
            30,
            "FreeRADIUS scored healthy",
        )
    sample = next(s for s in recorder.of(MetricsSample) if s.server == "F" and s.status_ok)
    assert sample.queue_len is not None, sample
    assert sample.threads_max == stack.config.server("F").threads_max, sample
    # threads from the process (FreeRADIUS 3.2 reports none), queue from Status-Server
    reports = [r for r in recorder.of(HealthReport) if r.server == "F"]
    assert any({"threads", "queue", "memory", "cpu"} <= set(r.parts) for r in reports), reports


async def test_overload_moves_clients_away_and_readmits_them(stack: Stack) -> None:
    config = stack.config
    home_a = sorted(c.id for c in config.clients if c.home == OVERLOADED)
    assert home_a, "the farm has no client of the overloaded server"
    reference = config.server(OVERLOADED).reference
    assert reference is not None
    recorder = Recorder()
    try:
        async with AsyncExitStack() as exits:
            bus = await _watch(stack, exits, recorder)
            waited = await recorder.until(
                lambda: len(recorder.latest_status()) == len(config.clients),
                90,
                "every client's agent to report",
            )
            _say(f"all {len(config.clients)} clients reporting after {waited:.1f}s")

            onset = time.monotonic()
            await bus.publish(
                bus.subjects.control(OVERLOADED),
                ServerControl(server=OVERLOADED, stalled_workers=reference.workers - 1),
            )

            def moved() -> bool:
                latest = recorder.latest_status()
                return all(latest[c].current not in ("", OVERLOADED) for c in home_a)

            await recorder.until(moved, 45, f"{OVERLOADED}'s clients {home_a} to move")
            stack.timings["failover"] = time.monotonic() - onset
            _say(f"{home_a} moved off {OVERLOADED} {stack.timings['failover']:.1f}s after onset")

            await bus.publish(
                bus.subjects.control(OVERLOADED),
                ServerControl(server=OVERLOADED, stalled_workers=0),
            )
            recovery = time.monotonic()

            def closed_and_home() -> bool:
                closed = any(
                    i.state == "closed" for i in recorder.of(Incident) if i.server == OVERLOADED
                )
                latest = recorder.latest_status()
                return closed and all(s.current == s.home for s in latest.values())

            await recorder.until(closed_and_home, 120, "the incident closed with every client home")
            stack.timings["readmission"] = time.monotonic() - recovery
            _say(f"every client home {stack.timings['readmission']:.1f}s after recovery")
    except BaseException:
        print(stack.logs(), flush=True)
        raise

    states = [i.state for i in recorder.of(Incident) if i.server == OVERLOADED]
    assert states[0] == "opened" and states[-1] == "closed", states
    assert "recovering" in states, states
    plans = [p for p in recorder.of(FailoverPlan) if p.server == OVERLOADED]
    assert sorted({m.client for p in plans for m in p.moves}) == home_a
    acks = [a for a in recorder.of(Ack) if a.server == OVERLOADED and a.accepted]
    moved_to = {a.client: a.now_on for a in acks if a.now_on != OVERLOADED}
    assert sorted(moved_to) == home_a, acks
    assert set(moved_to.values()) <= {"B", "C"}, moved_to
    # Two notifier replicas share one queue group: each client got one failover notice.
    sent = [
        d
        for d in recorder.of(Delivery)
        if d.server == OVERLOADED and d.notice_type == "notice.failover.v2" and d.outcome == "sent"
    ]
    assert sorted(d.client for d in sent) == home_a, sent
    waves = [w for w in recorder.of(ReadmitWave) if w.server == OVERLOADED and w.wave > 0]
    assert sorted(c for w in waves for c in w.clients) == home_a, waves
    assert waves[-1].final, waves
    # Clients of the other servers never moved.
    for status in recorder.of(ClientStatus):
        if status.home != OVERLOADED:
            assert status.current == status.home, status

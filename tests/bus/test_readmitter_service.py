"""The readmitter on a real nats-server: waves, pauses, relapses, restarts, requests."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgspec
from nats.js.kv import KeyValue

from schemas.events import (
    ClientStatus,
    Delivery,
    FailoverPlan,
    HealthReport,
    Incident,
    Move,
    ReadmitRequest,
    ReadmitWave,
)
from schemas.signing import client_key_id
from services.readmitter.service import run
from services.readmitter.waves import Readmission
from services.runtime.bus import Bus, Signer
from services.runtime.config import Config
from tests.conftest import FarmFactory
from tests.support.helpers import operator_bus

THRESHOLD = 0.6
# homed on A in a farm of 16 clients (every third from nas-01); nas-16 too
MOVED = ["nas-01", "nas-04", "nas-07", "nas-10", "nas-13"]


def _settings(interval: float) -> dict[str, Any]:
    return {
        "readmitter": {
            "sizing": "fixed",
            "wave_size": 2,
            "wave_interval_s": interval,
            "retry_after_s": 7.0,
        }
    }


class Harness:
    """A test-side bus that plays evaluator, targeter and agents, and hears waves."""

    def __init__(self, config: Config, bus: Bus, kv: KeyValue) -> None:
        self.config = config
        self.bus = bus
        self.kv = kv
        self.waves: dict[str, asyncio.Queue[ReadmitWave]] = {}

    async def listen(self, server: str) -> None:
        queue: asyncio.Queue[ReadmitWave] = asyncio.Queue()
        self.waves[server] = queue

        async def on_wave(event: ReadmitWave) -> None:
            await queue.put(event)

        await self.bus.subscribe(self.bus.subjects.readmit(server), on_wave, types=(ReadmitWave,))

    async def next_wave(
        self, server: str = "A", within: float = 5.0, *, arrive: bool = True
    ) -> ReadmitWave:
        """The next wave of ``server``; with ``arrive``, the clients it readmits then say
        they are home, as their agents would."""
        wave = await asyncio.wait_for(self.waves[server].get(), within)
        if arrive and wave.wave > 0:
            for client in wave.clients:
                await self.status(client, self.config.client(client).home)
        return wave

    async def no_wave(self, server: str = "A", within: float = 1.0) -> None:
        try:
            wave = await asyncio.wait_for(self.waves[server].get(), within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected wave {wave}")

    async def health(self, value: float, server: str = "A") -> None:
        report = HealthReport(
            server=server,
            sample_id="s",
            health=value,
            failover_threshold=0.2,
            connection_threshold=THRESHOLD,
        )
        await self.bus.publish(self.bus.subjects.health(server), report)

    async def incident(self, state: str, incident_id: str = "inc-1", server: str = "A") -> None:
        event = msgspec.convert(
            {
                "type": "incident",
                "incident_id": incident_id,
                "server": server,
                "state": state,
                "health": 0.5,
                "opened_at": 0.0,
            },
            Incident,
        )
        await self.bus.publish(self.bus.subjects.incident(server), event)

    async def plan(self, clients: list[str], incident_id: str = "inc-1", server: str = "A") -> None:
        moves = [Move(client=c, alternates=["B"]) for c in clients]
        plan = FailoverPlan(incident_id=incident_id, server=server, moves=moves)
        await self.bus.publish(self.bus.subjects.plan(server), plan)

    def signer(self, client: str) -> Signer:
        secret = self.config.read_secret(self.config.client(client).secret)
        return Signer(client_key_id(client), secret)

    async def request(self, client: str, server: str, *, signer: str | None = None) -> None:
        event = ReadmitRequest(client=client, server=server)
        await self.bus.publish(
            self.bus.subjects.request(server), event, signer=self.signer(signer or client)
        )

    async def status(self, client: str, current: str) -> None:
        """``client`` says, under its own secret, that it is on ``current``."""
        home = self.config.client(client).home
        event = ClientStatus(client=client, home=home, current=current)
        await self.bus.publish(self.bus.subjects.status(client), event, signer=self.signer(client))

    async def state(
        self, predicate: Callable[[Readmission], bool], server: str = "A", within: float = 5.0
    ) -> Readmission:
        """Wait until the readmitter's stored state of ``server`` satisfies ``predicate``."""
        watcher = await self.kv.watch(server)
        try:
            async with asyncio.timeout(within):
                async for entry in watcher:
                    if entry is None or not entry.value:
                        continue
                    state = msgspec.json.decode(entry.value, type=Readmission)
                    if predicate(state):
                        return state
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        raise AssertionError("watcher ended")

    async def until_ready(self) -> None:
        """Ask for readmission to B until the readmitter answers (it is subscribed)."""
        if "B" not in self.waves:
            await self.listen("B")
        while not self.waves["B"].empty():
            self.waves["B"].get_nowait()
        for _ in range(40):
            await self.request("nas-02", "B")
            try:
                answer = await asyncio.wait_for(self.waves["B"].get(), 0.25)
            except TimeoutError:
                continue
            assert answer.wave == 0
            assert answer.deferred == ["nas-02"]
            return
        raise AssertionError("readmitter never answered")


@asynccontextmanager
async def _harness(config: Config) -> AsyncIterator[Harness]:
    async with AsyncExitStack() as stack:
        bus = await operator_bus(config, stack, "test")
        await bus.ensure_stream(max_age_s=600, max_bytes=1 << 24)
        harness = Harness(config, bus, await bus.kv("readmitter"))
        await harness.listen("A")
        yield harness


@asynccontextmanager
async def _readmitter(harness: Harness) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run(harness.config, shutdown_trigger=stop.wait))
    try:
        await harness.until_ready()
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _start_recovery(harness: Harness, health: float) -> None:
    await harness.health(health)
    await harness.incident("opened")
    await harness.plan(MOVED)
    await harness.state(lambda s: len(s.away) == len(MOVED))
    await harness.incident("recovering")


async def test_waves_of_wave_size_are_spaced_and_end_final(farm: FarmFactory) -> None:
    interval = 0.3
    config, _ = farm(_settings(interval), clients=16)
    async with _harness(config) as harness, _readmitter(harness):
        await _start_recovery(harness, 0.9)
        waves = [await harness.next_wave()]
        while not waves[-1].final:
            waves.append(await harness.next_wave())

    assert [w.clients for w in waves] == [
        ["nas-01", "nas-04"],
        ["nas-07", "nas-10"],
        ["nas-13"],
        [],  # the final wave: every client readmitted is home
    ]
    assert [w.wave for w in waves] == [1, 2, 3, 4]
    assert [w.final for w in waves] == [False, False, False, True]
    assert all(w.incident_id == "inc-1" and w.health == 0.9 for w in waves)
    gaps = [b.time - a.time for a, b in itertools.pairwise(waves[:-1])]
    assert all(gap >= interval for gap in gaps), gaps


async def test_waves_pause_below_connection_threshold_and_resume(farm: FarmFactory) -> None:
    interval = 0.4
    config, _ = farm(_settings(interval), clients=16)
    async with _harness(config) as harness, _readmitter(harness):
        await _start_recovery(harness, 0.9)
        first = await harness.next_wave()
        assert first.clients == ["nas-01", "nas-04"]
        await harness.health(THRESHOLD - 0.2)
        await harness.no_wave(within=3 * interval)
        await harness.health(THRESHOLD + 0.1)
        second = await harness.next_wave()
        third = await harness.next_wave()

    assert second.time - first.time >= 3 * interval
    assert second.health == THRESHOLD + 0.1
    assert (second.wave, second.clients, second.final) == (2, ["nas-07", "nas-10"], False)
    assert (third.wave, third.clients, third.final) == (3, ["nas-13"], False)


async def test_relapse_stops_waves_until_recovering_again(farm: FarmFactory) -> None:
    interval = 0.3
    config, _ = farm(_settings(interval), clients=16)
    async with _harness(config) as harness, _readmitter(harness):
        await _start_recovery(harness, 0.9)
        first = await harness.next_wave()
        await harness.incident("opened")
        await harness.plan(["nas-16"])
        await harness.state(lambda s: s.state == "opened" and "nas-16" in s.away)
        await harness.no_wave(within=3 * interval)
        await harness.incident("recovering")
        rest = [await harness.next_wave()]
        while not rest[-1].final:
            rest.append(await harness.next_wave())

    assert first.clients == ["nas-01", "nas-04"]
    assert [w.clients for w in rest] == [["nas-07", "nas-10"], ["nas-13", "nas-16"], []]
    assert [w.wave for w in rest] == [2, 3, 4]


async def test_restart_resumes_readmission_from_stored_state(farm: FarmFactory) -> None:
    config, _ = farm(_settings(0.3), clients=16)
    async with _harness(config) as harness:
        async with _readmitter(harness):
            await _start_recovery(harness, 0.9)
            first = await harness.next_wave()
            await harness.health(0.1)
            await harness.state(lambda s: s.readmitted == ("nas-01", "nas-04"))
        async with _readmitter(harness):
            await harness.no_wave(within=0.6)
            await harness.health(0.9)
            second = await harness.next_wave()
            third = await harness.next_wave()

    assert first.clients == ["nas-01", "nas-04"]
    assert (second.wave, second.clients, second.final) == (2, ["nas-07", "nas-10"], False)
    assert (third.wave, third.clients, third.final) == (3, ["nas-13"], False)


async def test_client_request_deferred_while_opened_granted_when_healthy(
    farm: FarmFactory,
) -> None:
    config, _ = farm(_settings(0.3), clients=6)
    assert config.client("nas-01").home == "A"
    assert config.client("nas-02").home == "B"
    async with _harness(config) as harness, _readmitter(harness):
        await harness.health(0.9)
        await harness.incident("opened")
        await harness.plan(["nas-01", "nas-04"])
        await harness.state(lambda s: s.away == ("nas-01", "nas-04"))

        await harness.request("nas-01", "A")
        deferred = await harness.next_wave()
        assert deferred.wave == 0
        assert deferred.clients == []
        assert deferred.deferred == ["nas-01"]
        assert deferred.retry_after_s == 7.0
        assert not deferred.final
        assert deferred.incident_id == "inc-1"

        await harness.incident("closed")
        await harness.state(lambda s: s.state == "closed")
        # not its home: dropped; another client's key: dropped by the bus
        await harness.request("nas-02", "A")
        await harness.request("nas-01", "A", signer="nas-02")
        await harness.request("nas-01", "A")
        granted = await harness.next_wave()
        assert granted.wave == 0
        assert granted.clients == ["nas-01"]
        assert granted.deferred == []
        assert not granted.final
        stored = await harness.state(lambda s: "nas-01" not in s.away)
        assert stored.away == ("nas-04",)
        await harness.no_wave(within=0.3)


async def test_a_client_away_that_no_plan_here_moved_is_readmitted_before_the_incident_closes(
    farm: FarmFactory,
) -> None:
    """Seen in chaos runs: a readmitter killed as the incident opened missed the plans, and
    the incident closed with clients away (home later on their own timers, all at once).
    Where the clients say they are now counts: a client of A away from it is readmitted."""
    config, _ = farm(_settings(0.3), clients=6)
    async with _harness(config) as harness, _readmitter(harness):
        await harness.health(0.9)
        await harness.incident("opened")
        await harness.state(lambda s: s.state == "opened")
        # the plan that moved nas-01 and nas-04 (homed on A) went by unheard
        for client in ("nas-01", "nas-04"):
            await harness.status(client, "B")
        await harness.status("nas-02", "C")  # away from its home B, which has no incident
        await harness.state(lambda s: set(s.away) == {"nas-01", "nas-04"})
        await harness.incident("recovering")
        waves = [await harness.next_wave()]
        while not waves[-1].final:
            waves.append(await harness.next_wave())
    assert sorted(c for w in waves for c in w.clients) == ["nas-01", "nas-04"]


async def test_the_incident_is_not_closed_while_a_readmitted_client_is_not_home(
    farm: FarmFactory,
) -> None:
    """Seen in chaos runs: an agent killed at the first wave missed its readmission notice,
    and the incident closed on the final wave with its client away (home later on its own
    timer). The final wave now waits until every client readmitted is heard home; one
    whose notice failed is readmitted again in a later wave."""
    config, _ = farm(_settings(0.3), clients=6)
    async with _harness(config) as harness, _readmitter(harness):
        await harness.health(0.9)
        await harness.incident("opened")
        await harness.plan(["nas-01", "nas-04"])
        await harness.state(lambda s: s.away == ("nas-01", "nas-04"))
        await harness.incident("recovering")
        wave = await harness.next_wave(arrive=False)
        assert (wave.clients, wave.final) == (["nas-01", "nas-04"], False)
        await harness.status("nas-01", "A")
        await harness.state(lambda s: s.returning == ("nas-04",))
        await harness.no_wave(within=1.0)  # nas-04 not home: no final wave
        failed = Delivery(
            notice_id="n",
            notice_type="notice.readmit.v2",
            client="nas-04",
            server="A",
            outcome="failed",
            attempts=4,
        )
        await harness.bus.publish(harness.bus.subjects.delivery("nas-04"), failed)
        again = await harness.next_wave()
        assert (again.clients, again.final) == (["nas-04"], False)
        final = await harness.next_wave()
        assert (final.clients, final.final) == ([], True)


async def test_the_final_wave_goes_again_until_the_incident_is_known_closed(
    farm: FarmFactory,
) -> None:
    """Seen in chaos runs: the evaluator killed just before the final wave never heard it,
    and the incident stayed recovering for good. The final wave now goes again, with no
    clients, until the incident is closed (or the evaluator's reports say healthy)."""
    config, _ = farm(_settings(0.3), clients=6)
    async with _harness(config) as harness, _readmitter(harness):
        await harness.health(0.9)
        await harness.incident("opened")
        await harness.plan(["nas-01"])
        await harness.state(lambda s: s.away == ("nas-01",))
        await harness.incident("recovering")
        last = await harness.next_wave()
        assert (last.clients, last.final) == (["nas-01"], False)
        first = await harness.next_wave()
        assert (first.clients, first.final) == ([], True)
        # nobody closes the incident: the same final wave again
        again = await harness.next_wave()
        assert (again.wave, again.clients, again.final) == (first.wave, [], True)
        await harness.incident("closed")
        await harness.state(lambda s: s.state == "closed")
        while not harness.waves["A"].empty():  # one may have crossed the closing
            late = harness.waves["A"].get_nowait()
            assert (late.clients, late.final) == ([], True)
        await harness.no_wave(within=1.0)


async def test_requests_in_a_burst_are_written_together(farm: FarmFactory) -> None:
    """The clients of one server ask to return on their own timers, by the thousand within
    seconds at scale: each puts its client first in the next wave, and the state is written
    once for a burst of them, not once per request."""
    config, _ = farm(_settings(0.3), clients=16)
    async with _harness(config) as harness, _readmitter(harness):
        await harness.health(0.9)
        await harness.incident("opened")
        await harness.plan(MOVED)
        before = await harness.state(lambda s: len(s.away) == len(MOVED))
        revision = (await harness.kv.get("A")).revision
        for client in MOVED:
            await harness.request(client, "A")
        answers = [await harness.next_wave() for _ in MOVED]
        stored = await harness.state(lambda s: len(s.asked) == len(MOVED))
        written = (await harness.kv.get("A")).revision - revision
    assert before.asked == ()
    assert sorted(c for a in answers for c in a.deferred) == sorted(MOVED)
    assert set(stored.asked) == set(MOVED)
    assert written <= 2, f"{written} writes for {len(MOVED)} requests"


async def test_a_client_heard_home_is_written_by_a_clean_stop(farm: FarmFactory) -> None:
    """A client heard home decides no wave: it is written with the next change, or a
    second later; a readmitter that stops before writes it as it stops."""
    config, _ = farm(_settings(0.3), clients=6)
    async with _harness(config) as harness:
        async with _readmitter(harness):
            await harness.health(0.9)
            await harness.incident("opened")
            await harness.plan(["nas-01", "nas-04"])
            await harness.state(lambda s: s.away == ("nas-01", "nas-04"))
            await harness.incident("recovering")
            wave = await harness.next_wave(arrive=False)
            assert wave.clients == ["nas-01", "nas-04"]
            await harness.state(lambda s: s.returning == ("nas-01", "nas-04"))
            await harness.status("nas-01", "A")
            await harness.bus.nc.flush()
        entry = await harness.kv.get("A")
    assert entry.value is not None
    stored = msgspec.json.decode(entry.value, type=Readmission)
    assert stored.returning == ("nas-04",)
    assert stored.readmitted == ("nas-01", "nas-04")

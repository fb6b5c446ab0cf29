"""Every event of the aaa-failover flow, as frozen, tagged msgspec Structs.

The wire contract for outside tools: importable with msgspec alone. Rules
(msgspec schema evolution): a new field gets a default, a field never changes
type, a breaking change is a new tag. Unknown fields are accepted so that old
readers keep working with new writers.
"""

from __future__ import annotations

import secrets
import sys
import time
from typing import Annotated, Literal

import msgspec

Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
"""Every number an event carries: NaN and the infinities do not decode (msgpack can carry
them, JSON cannot), so no ``rate = inf`` or NaN time reaches a service's state."""


def new_id() -> str:
    """A fresh event id: 32 lowercase hex digits, 128 random bits.

    ``secrets.token_hex`` rather than ``uuid4().hex``: the same digits without
    building a UUID object, a quarter of the time, on every event published.
    """
    return secrets.token_hex(16)


def deficit(health: float, failover_threshold: float) -> float:
    """How far ``health`` is below the failover threshold, as a share of it (0 when not
    below, at most 1): a HealthReport's and a FailoverPlan's ``deficit``."""
    if failover_threshold <= 0 or health >= failover_threshold:
        return 0.0
    return min(1.0, (failover_threshold - health) / failover_threshold)


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields every event carries.

    ``id`` is unique per event (receivers reject a repeated id), ``time`` is
    the UNIX time at which it was made (receivers reject it outside their
    replay window) and ``source`` names the publishing service instance.
    """

    id: str = msgspec.field(default_factory=new_id)
    time: Finite = msgspec.field(default_factory=time.time)
    source: str = ""


# --- collector -------------------------------------------------------------


class ServiceCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one availability check of a service the server needs."""

    name: str
    kind: Literal["mandatory", "dependent"]
    ok: bool
    detail: str = ""
    check: str = ""
    latency_s: Finite | None = None


class MetricsSample(Event, frozen=True, kw_only=True, tag="metrics.sample"):
    """What the collector read of one server in one interval.

    A figure that could not be read is ``None`` and the reason is listed in
    ``errors``: it never turns into a zero that looks healthy. ``sources``
    says where each figure came from (``status-server``, ``process``,
    ``host``, ``config``, ``radiusd.conf``, ``probes``). ``queue_len`` is the auth queue; rates are
    per second over the interval since the previous sample.

    The request path: ``probes`` synthetic Access-Requests were decided in
    the collector's latency window, ``probes_slow`` of them not answered
    within the server's latency objective (``probes_failed`` of those not
    at all); the percentiles are of those answered. ``outstanding`` is the
    requests in flight inside the server, from its Total-* counters, and
    ``outstanding_latency_s`` the time in the server it implies (Little's
    law: outstanding / arrival rate).
    """

    server: str
    seq: int
    status_ok: bool
    threads_active: int | None = None
    threads_total: int | None = None
    threads_max: int | None = None
    queue_len: int | None = None
    queue_len_internal: int | None = None
    queue_len_acct: int | None = None
    queue_len_proxy: int | None = None
    queue_len_detail: int | None = None
    pps_in: int | None = None
    pps_out: int | None = None
    access_requests_per_s: Finite | None = None
    auth_responses_per_s: Finite | None = None
    acct_requests_per_s: Finite | None = None
    acct_responses_per_s: Finite | None = None
    process_threads: int | None = None
    memory_percent: Finite | None = None
    cpu_percent: Finite | None = None
    process_count: int | None = None
    process_tree_count: int | None = None
    probes: int | None = None
    probes_slow: int | None = None
    probes_failed: int | None = None
    probe_latency_p50_s: Finite | None = None
    probe_latency_p90_s: Finite | None = None
    probe_latency_max_s: Finite | None = None
    outstanding: int | None = None
    outstanding_latency_s: Finite | None = None
    services: list[ServiceCheck] = msgspec.field(default_factory=list)
    sources: dict[str, str] = msgspec.field(default_factory=dict)
    errors: list[str] = msgspec.field(default_factory=list)


# --- evaluator -------------------------------------------------------------

IncidentState = Literal["opened", "recovering", "closed"]


class HealthReport(Event, frozen=True, kw_only=True, tag="health.report"):
    """The health score of one sample, and why it is what it is.

    ``parts`` are the 0-1 headrooms combined by the server's rule;
    ``penalties`` what each failed dependent service took off; ``limiting``
    names what decided the score and ``reason`` says it in words;
    ``sources`` says where each part was read (``status-server``,
    ``process``, ``host``, ``probes``, ``counters``, ``agents``).
    """

    server: str
    sample_id: str
    health: Finite
    parts: dict[str, Finite] = msgspec.field(default_factory=dict)
    sources: dict[str, str] = msgspec.field(default_factory=dict)
    penalties: dict[str, Finite] = msgspec.field(default_factory=dict)
    limiting: str = ""
    reason: str = ""
    failover_threshold: Finite
    connection_threshold: Finite
    deficit: Finite = 0.0
    incident_id: str | None = None
    state: Literal["healthy", "overloaded", "recovering"] = "healthy"


class Incident(Event, frozen=True, kw_only=True, tag="incident"):
    """A change of an overload incident of one server."""

    incident_id: str
    server: str
    state: IncidentState
    health: Finite
    reason: str = ""
    opened_at: Finite
    relapses: int = 0


# --- targeter --------------------------------------------------------------


class Move(msgspec.Struct, frozen=True, kw_only=True):
    """One client to move, the alternates it may use in order, and why.

    ``why`` says why the client was chosen, ``where`` why its first
    alternate was picked; ``load`` is the request rate it takes along.
    """

    client: str
    alternates: list[str]
    why: str = ""
    where: str = ""
    load: Finite = 0.0


class FailoverPlan(Event, frozen=True, kw_only=True, tag="failover.plan"):
    """Which clients of an overloaded server move, and where to.

    ``step`` counts the plans of one incident (a later step sheds more); a
    plan too large for one message travels as ``parts`` events sharing its
    ``plan_id``, each with some of the moves and the same summary;
    ``share`` is the part of the server's load asked to move (from the
    health ``deficit`` below the failover threshold), ``cap`` the most clients
    one step may move, ``load`` the server's load before the step and
    ``moved_load`` what the moves take away.
    """

    plan_id: str = msgspec.field(default_factory=new_id)
    incident_id: str
    server: str
    moves: list[Move] = msgspec.field(default_factory=list)
    unplaced: list[str] = msgspec.field(default_factory=list)
    reason: str = ""
    step: int = 1
    health: Finite | None = None
    deficit: Finite | None = None
    share: Finite | None = None
    cap: int | None = None
    load: Finite | None = None
    moved_load: Finite = 0.0
    part: int = 1
    parts: int = 1


# --- notifier and agent ----------------------------------------------------


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Where a client reaches a RADIUS server; accounting at ``auth_port + 1`` unless
    ``acct_port`` says otherwise."""

    server: str
    ip: str
    auth_port: int
    acct_port: int | None = None

    @property
    def accounting_port(self) -> int:
        return self.acct_port if self.acct_port is not None else self.auth_port + 1


class FailoverNotice(Event, frozen=True, kw_only=True, tag="notice.failover.v2"):
    """Tells one client to leave ``server`` for one of ``alternates``, server ids in order.

    Carried with an authenticator under the client's own shared secret (see
    ``schemas.signing.client_authenticator``); ``seq`` grows per client and
    the notice is void after ``valid_until``. Alternates are named, never
    addressed: the client finds each one's address in its own configuration
    and refuses a notice naming a server it does not know, so whoever holds
    a client's secret still cannot send its requests to an address of their
    choosing. (``notice.failover``, which carried addresses, is retired.)
    """

    incident_id: str
    server: str
    client: str
    alternates: list[str]
    seq: int
    valid_until: Finite


class ReadmitNotice(Event, frozen=True, kw_only=True, tag="notice.readmit.v2"):
    """Tells one client it may (``granted``) or may not yet return to its home ``server``.

    The client's home address is in its own configuration, never in the
    notice. (``notice.readmit``, which carried it, is retired.)
    """

    incident_id: str
    server: str
    client: str
    granted: bool = True
    wave: int = 0
    retry_after_s: Finite = 0.0
    seq: int
    valid_until: Finite


class Delivery(Event, frozen=True, kw_only=True, tag="delivery"):
    """The fate of one notice: sent, retried, acked or failed."""

    notice_id: str
    notice_type: str
    client: str
    server: str
    outcome: Literal["sent", "retried", "acked", "failed"]
    attempts: int = 1
    latency_s: Finite | None = None


class Ack(Event, frozen=True, kw_only=True, tag="ack"):
    """A client's answer to a notice: what it did.

    ``draining`` counts the EAP conversations in progress on the server the
    client left: they finish there, and the move is complete when they have.
    ``again``: the answer to the same notice heard again (a re-send), given as
    before; the client did nothing this time.
    """

    notice_id: str
    client: str
    server: str
    accepted: bool
    now_on: str = ""
    reason: str = ""
    draining: int = 0
    again: bool = False


class ReadmitRequest(Event, frozen=True, kw_only=True, tag="readmit.request"):
    """A client asks to return to its home ``server`` after its own timeout."""

    client: str
    server: str
    reason: str = "timeout"


class UpstreamReport(msgspec.Struct, frozen=True, kw_only=True):
    """How one client's requests to one server fared since its previous status.

    ``answers`` came within the client's response window, ``timeouts`` did
    not (each such request is ``resent`` to the next upstream when one is
    alive); the percentiles are of the answers' response times; ``changes``
    counts the server's zombie, dead and alive changes; ``state`` is where
    it is now; ``conversations`` counts the EAP conversations in progress it
    holds (their rounds go only there).
    """

    server: str
    state: Literal["alive", "zombie", "dead"] = "alive"
    answers: int = 0
    timeouts: int = 0
    resent: int = 0
    p50_s: Finite | None = None
    p90_s: Finite | None = None
    max_s: Finite | None = None
    changes: int = 0
    conversations: int = 0


class UpstreamChange(msgspec.Struct, frozen=True, kw_only=True):
    """A client's own failover decision about one upstream: it changed state, and why."""

    server: str
    before: Literal["alive", "zombie", "dead"]
    after: Literal["alive", "zombie", "dead"]
    reason: str = ""
    at: Finite = 0.0


class ClientStatus(Event, frozen=True, kw_only=True, tag="client.status"):
    """Where a client is and how its requests fare (sent by the agent).

    ``sent`` to ``lost`` count the agent's own synthetic requests;
    ``relayed``, ``relayed_answered`` and ``relayed_lost`` the NAS requests
    its proxy relayed. ``upstreams`` says how requests fared per server over
    the ``period_s`` since the previous status, with the client's
    ``response_window_s``; ``changes`` lists the client's own failovers in
    that period (a status goes out at once after each).
    """

    client: str
    home: str
    current: str
    rate: Finite | None = None
    sent: int = 0
    answered: int = 0
    rejected: int = 0
    lost: int = 0
    notices_rejected: int = 0
    relayed: int = 0
    relayed_answered: int = 0
    relayed_lost: int = 0
    period_s: Finite | None = None
    response_window_s: Finite | None = None
    upstreams: list[UpstreamReport] = msgspec.field(default_factory=list)
    changes: list[UpstreamChange] = msgspec.field(default_factory=list)


# --- readmitter ------------------------------------------------------------


class ReadmitWave(Event, frozen=True, kw_only=True, tag="readmit.wave"):
    """Clients that may reconnect to ``server`` now, and those told to wait."""

    incident_id: str
    server: str
    wave: int
    clients: list[str] = msgspec.field(default_factory=list)
    deferred: list[str] = msgspec.field(default_factory=list)
    retry_after_s: Finite = 0.0
    health: Finite | None = None
    final: bool = False
    reason: str = ""


# --- reference server control ----------------------------------------------


class ServerControl(Event, frozen=True, kw_only=True, tag="control.server"):
    """Changes a reference server's load model (demo, tests, benchmarks).

    ``stalled_workers`` worker threads are held busy, as by a hung backend;
    ``service_time_ms`` is the time each request takes in a worker.
    """

    server: str
    stalled_workers: int | None = None
    service_time_ms: Finite | None = None


AnyEvent = (
    MetricsSample
    | HealthReport
    | Incident
    | FailoverPlan
    | FailoverNotice
    | ReadmitNotice
    | Delivery
    | Ack
    | ReadmitRequest
    | ClientStatus
    | ReadmitWave
    | ServerControl
)

EVENT_TYPES: tuple[type[Event], ...] = (
    MetricsSample,
    HealthReport,
    Incident,
    FailoverPlan,
    FailoverNotice,
    ReadmitNotice,
    Delivery,
    Ack,
    ReadmitRequest,
    ClientStatus,
    ReadmitWave,
    ServerControl,
)

"""Configuration: one TOML file decoded into frozen Structs.

Unknown fields are refused, every value is typed, and a bad file fails with
one line naming the field (:class:`ConfigError`; the CLI exits 2). Secrets
are never in the file itself: each names a file (relative to the config
file) or an environment variable.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

from schemas.errors import AaaFailoverError
from schemas.events import Endpoint
from schemas.subjects import check_token, overlaps


class ConfigError(AaaFailoverError):
    """The configuration cannot be used; the message names the field."""


class Base(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Secret(Base, frozen=True, kw_only=True):
    """Where a secret comes from: a file (first line) or an environment variable."""

    file: str | None = None
    env: str | None = None

    def __post_init__(self) -> None:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of `file` or `env`")


class BusKey(Base, frozen=True, kw_only=True):
    id: str
    secret: Secret


class BusAuth(Base, frozen=True, kw_only=True):
    """NATS users: each process joins as its own user, its password the first line of
    ``<dir>/<user>`` (relative to the config file).

    ``user`` overrides the user (else the service's own, see
    services/runtime/permissions.py). ``agents`` names agent users and the
    clients each serves; without it one user, ``agent``, serves every client.
    """

    dir: str
    user: str | None = None
    agents: dict[str, list[str]] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in [self.user or "", *self.agents]:
            if name and not USER.match(name):
                raise ValueError(f"user {name!r} must be 1-64 of letters, digits, '_' or '-'")


class BusTls(Base, frozen=True, kw_only=True):
    """TLS to the bus (paths relative to the config file).

    ``ca`` signed the server's certificate; ``cert`` and ``key`` are this side's,
    for a server that asks for one. ``server_cert`` and ``server_key`` are
    what the embedded nats-server of `up` serves (`aaa-failover dev-ca` makes
    all of them); it asks clients for a certificate when ``cert`` is set.
    """

    ca: str
    cert: str | None = None
    key: str | None = None
    server_cert: str | None = None
    server_key: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both `cert` and `key`, or neither")
        if (self.server_cert is None) != (self.server_key is None):
            raise ValueError("give both `server_cert` and `server_key`, or neither")


USER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def split_urls(url: str) -> list[str]:
    """The servers named by a bus URL: one, or a cluster's nodes separated by commas."""
    return [part.strip() for part in url.split(",") if part.strip()]


def url_userinfo(url: str) -> bool:
    """Whether the URL carries a user or password (``nats://user:pass@host``)."""
    netloc = url.split("://", 1)[-1].split("/", 1)[0]
    return "@" in netloc


class BusConfig(Base, frozen=True, kw_only=True):
    """The NATS bus. With no ``url``, `aaa-failover up` starts an embedded server.

    ``url`` may name every node of a cluster, separated by commas
    (``nats://n1:4222,nats://n2:4222,nats://n3:4222``): a service connects to
    one and moves to another when it is lost. ``replicas`` is how many nodes
    hold the stream and every bucket (3 on a 3-node cluster, so losing any one
    loses nothing). ``lease_s``: how long the lease of a service of which exactly
    one replica acts outlives its holder (services/runtime/lease.py): a standby
    takes over from one that died once it has seen the lease unwritten that
    long (it looks every quarter of a second), without waiting for
    nats-server to remove the entry. A holder that cannot renew it for
    that long stops, so it must outlast the bus being away: a nats-server
    restarted, or a cluster electing the leader of the leases' bucket (5 s
    measured).
    """

    url: str | None = None
    prefix: str = "aaa"
    codec: Literal["json", "msgpack"] = "json"
    key: BusKey | None = None
    verify_keys: list[BusKey] = msgspec.field(default_factory=list)
    service_keys: dict[str, list[BusKey]] = msgspec.field(default_factory=dict)
    replay_window_s: float = 30.0
    stream_max_age_s: float = 7 * 24 * 3600.0
    stream_max_bytes: int = 1 << 30
    connect_timeout_s: float = 5.0
    replicas: int = 1
    lease_s: float = 10.0
    sandbox: bool = False
    auth: BusAuth | None = None
    tls: BusTls | None = None
    base_dir: str = ""

    def __post_init__(self) -> None:
        if self.sandbox and self.prefix == "aaa":
            raise ValueError("a sandbox needs its own prefix, not the live 'aaa'")
        for part in self.prefix.split("."):
            if not part or not part.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"prefix {self.prefix!r} must be dot-separated tokens")
        if self.replay_window_s <= 0:
            raise ValueError("replay_window_s must be positive")
        if not 0.5 <= self.lease_s <= 300:
            raise ValueError("lease_s must be from 0.5 to 300 seconds")
        if not 1 <= self.replicas <= 5:
            raise ValueError("replicas must be from 1 to 5 (JetStream's limit)")
        if self.url is not None and any(url_userinfo(u) for u in split_urls(self.url)):
            raise ValueError(
                "url must not hold a user or password: name the password files in bus.auth"
            )
        ids = [k.id for k in (self.key, *self.verify_keys) if k is not None]
        for service, keys in self.service_keys.items():
            if not keys:
                raise ValueError(f"service_keys.{service} lists no key")
            ids += [k.id for k in keys]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"key ids must be unique: {', '.join(repeated)}")
        for key_id in ids:
            if key_id.startswith(("client:", "sandbox:")):
                raise ValueError(f"key id {key_id!r}: client: and sandbox: are reserved")


class ReferenceServer(Base, frozen=True, kw_only=True):
    """The load model of a reference server run by `aaa-failover run aaa`.

    With ``challenge_rounds``, each login is that many Access-Challenge round
    trips bound by ``State`` to this server before it is decided, as an EAP
    conversation is (``services/aaa/sessions.py``).
    """

    workers: int = 8
    service_time_ms: float = 5.0
    queue_max: int = 256
    users: dict[str, str] = msgspec.field(default_factory=lambda: {"alice": "wonderland"})
    pid_file: str | None = None
    challenge_rounds: int = 0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.challenge_rounds < 0:
            raise ValueError("challenge_rounds must not be negative")
        if self.service_time_ms < 0:
            raise ValueError("service_time_ms must not be negative")


class ProcessMatch(Base, frozen=True, kw_only=True):
    """How the collector finds the server's process."""

    pid_file: str | None = None
    name: str | None = None
    cmdline: str | None = None


class CheckBase(Base, frozen=True, kw_only=True, tag_field="check"):
    """A service the server needs, and how to tell that it is available.

    ``mandatory``: the server must not run without it (down -> health 0).
    ``dependent``: it degrades without it (down -> health lowered by ``weight``).
    """

    name: str
    kind: Literal["mandatory", "dependent"] = "mandatory"
    timeout_s: float = 1.0
    weight: float = 0.3

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if not 0 <= self.weight <= 1:
            raise ValueError("weight must be in [0, 1]")


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")


class ProcessCheck(CheckBase, frozen=True, kw_only=True, tag="process"):
    """The service's process is alive."""

    match: ProcessMatch


class TcpCheck(CheckBase, frozen=True, kw_only=True, tag="tcp"):
    """A TCP connection to the port is accepted."""

    host: str = "127.0.0.1"
    port: int

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_port(self.port)


class RadiusCheck(CheckBase, frozen=True, kw_only=True, tag="radius"):
    """A RADIUS Status-Server request to the port is answered."""

    host: str = "127.0.0.1"
    port: int
    secret: Secret

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_port(self.port)


class UnixCheck(CheckBase, frozen=True, kw_only=True, tag="unix"):
    """A unix stream socket at ``path`` accepts a connection."""

    path: str


class WritableCheck(CheckBase, frozen=True, kw_only=True, tag="writable"):
    """A file can be created and written in the directory ``path``."""

    path: str


class CommandCheck(CheckBase, frozen=True, kw_only=True, tag="command"):
    """``command`` (argv, no shell) exits 0 within the timeout."""

    command: list[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.command:
            raise ValueError("command must not be empty")


ServiceCheckConfig = (
    ProcessCheck | TcpCheck | RadiusCheck | UnixCheck | WritableCheck | CommandCheck
)


class HealthWeights(Base, frozen=True, kw_only=True):
    """Weights of the health parts in the ``weighted`` rule (0 leaves a part out)."""

    threads: float = 1.0
    queue: float = 1.0
    memory: float = 1.0
    cpu: float = 1.0
    processes: float = 1.0
    latency: float = 1.0
    outstanding: float = 1.0
    clients: float = 1.0


class HealthRule(Base, frozen=True, kw_only=True):
    """How a server's health parts combine: the minimum, or a weighted mean."""

    rule: Literal["min", "weighted"] = "min"
    weights: HealthWeights = HealthWeights()


class ProbeUser(Base, frozen=True, kw_only=True):
    """A user the collector's synthetic Access-Requests log in as."""

    name: str
    password: Secret


class LatencyProbe(Base, frozen=True, kw_only=True):
    """Synthetic Access-Requests from the collector to a server's auth port.

    ``per_interval`` probes go out in each collector interval, evenly spread
    in time, each with the next of ``users`` and of ``nas_identifiers`` in
    turn, under ``secret`` (the collector is a RADIUS client of the server),
    from ``source_ip`` when set (the address the server knows the collector by).
    A probe not answered within ``objective_s`` is *slow*; one not answered
    within ``timeout_s`` has *failed*. The ``latency`` part of health is
    1 - (share of slow probes) / ``tolerance``, over the probes decided in
    the last ``window_s`` (the collector interval when not set): with the
    default tolerance, a quarter of the probes over the objective leaves no
    headroom.
    """

    secret: Secret
    users: list[ProbeUser]
    nas_identifiers: list[str] = msgspec.field(default_factory=lambda: ["aaa-failover-probe"])
    per_interval: int = 10
    objective_s: float = 0.25
    timeout_s: float = 2.0
    tolerance: float = 0.25
    window_s: float | None = None
    source_ip: str | None = None

    def __post_init__(self) -> None:
        if not self.users:
            raise ValueError("users must name at least one probe user")
        if not self.nas_identifiers:
            raise ValueError("nas_identifiers must not be empty")
        if self.per_interval < 1:
            raise ValueError("per_interval must be at least 1")
        if not 0 < self.objective_s < self.timeout_s:
            raise ValueError("objective_s must be positive and below timeout_s")
        if not 0 < self.tolerance <= 1:
            raise ValueError("tolerance must be in (0, 1]")
        if self.window_s is not None and self.window_s <= 0:
            raise ValueError("window_s must be positive")


class ServerConfig(Base, frozen=True, kw_only=True):
    """One AAA server of the farm.

    ``probe`` sends it synthetic Access-Requests (the ``latency`` part of
    health). ``cleanup_delay_s`` is how long it keeps a finished request
    before counting its response (FreeRADIUS ``cleanup_delay``): when not
    set, it is read from ``radiusd_conf``, else 0 for a reference server and
    5 s (the FreeRADIUS default) for any other.
    """

    id: str
    ip: str = "127.0.0.1"
    auth_port: int = 1812
    acct_port: int | None = None
    status_port: int | None = None
    status_secret: Secret
    threads_max: int | None = None
    radiusd_conf: str | None = None
    site: str = ""
    capacity_rps: float | None = None
    queue_max: int = 256
    process: ProcessMatch | None = None
    services: list[ServiceCheckConfig] = msgspec.field(default_factory=list)
    health: HealthRule | None = None
    reference: ReferenceServer | None = None
    probe: LatencyProbe | None = None
    cleanup_delay_s: float | None = None

    def __post_init__(self) -> None:
        check_token(self.id, "server id")
        if self.cleanup_delay_s is not None and self.cleanup_delay_s < 0:
            raise ValueError("cleanup_delay_s must not be negative")
        for port in (self.auth_port, self.acct_port, self.status_port):
            if port is not None:
                _check_port(port)
        _no_repeats([c.name for c in self.services], "service name")

    @property
    def probe_port(self) -> int:
        return self.status_port or self.auth_port

    @property
    def endpoint(self) -> Endpoint:
        """Where clients reach this server (accounting at ``auth_port + 1`` unless set)."""
        return Endpoint(
            server=self.id, ip=self.ip, auth_port=self.auth_port, acct_port=self.acct_port
        )


class ProxyConfig(Base, frozen=True, kw_only=True):
    """The agent as a RADIUS proxy in front of NAS devices.

    NAS devices send Access- and Accounting-Requests to ``ip``:``auth_port``
    / ``acct_port`` under ``nas_secret``; the agent forwards them to its
    current upstream under the client's own secret. Like a FreeRADIUS home
    server pool, an upstream that leaves a request unanswered for
    ``response_window_s`` is a zombie: it is probed with Status-Server every
    ``check_interval_s`` and taken back after ``answers_to_alive`` answers.
    A round of an EAP conversation waits for the upstream that holds it up to
    ``conversation_wait_s``, as no other upstream can answer it.

    What it takes (BlastRADIUS, CVE-2024-3596, as FreeRADIUS 3.2.5 and later):
    datagrams only from ``nas_addresses`` (addresses or CIDRs; by default the
    client's own ``ip`` and the proxy's ``ip``, and all of loopback when the
    proxy listens on loopback); Access-Requests only with a valid
    Message-Authenticator, except from the NAS devices in
    ``nas_without_message_authenticator`` (FreeRADIUS's per-client
    ``require_message_authenticator = no``), whose Access-Requests are still
    refused when they carry Proxy-State without one (``limit_proxy_state``);
    replies to Access-Requests only with a valid Message-Authenticator, except
    from the servers (ids) in ``upstreams_without_message_authenticator``.
    Bounds: ``max_in_flight`` requests in flight (beyond: dropped as
    ``overload``), ``max_upstream_sockets`` sockets per upstream address
    (256 requests each), each closed once unused for ``socket_idle_s``.
    """

    ip: str = "127.0.0.1"
    auth_port: int = 1812
    acct_port: int | None = None
    nas_secret: Secret
    response_window_s: float = 2.0
    check_interval_s: float = 1.0
    check_timeout_s: float = 0.5
    answers_to_alive: int = 3
    conversation_wait_s: float = 10.0
    nas_addresses: list[str] | None = None
    nas_without_message_authenticator: list[str] = msgspec.field(default_factory=list)
    upstreams_without_message_authenticator: list[str] = msgspec.field(default_factory=list)
    max_in_flight: int = 4000
    max_upstream_sockets: int = 16
    socket_idle_s: float = 60.0

    def __post_init__(self) -> None:
        import ipaddress

        if self.conversation_wait_s < self.response_window_s:
            raise ValueError("conversation_wait_s must be at least response_window_s")
        if self.nas_addresses == []:
            raise ValueError("nas_addresses is empty: leave it out for the default")
        for name in ("nas_addresses", "nas_without_message_authenticator"):
            for entry in getattr(self, name) or ():
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"{name}: {entry!r} is not an address or CIDR") from None
        for server in self.upstreams_without_message_authenticator:
            check_token(server, "upstreams_without_message_authenticator entry")
        if self.max_in_flight < 1 or self.max_upstream_sockets < 1:
            raise ValueError("max_in_flight and max_upstream_sockets must be at least 1")
        if self.max_in_flight >= 256 * self.max_upstream_sockets:
            raise ValueError(
                "max_upstream_sockets leaves no room for max_in_flight: each socket carries "
                "256 requests, and one is kept for a probe"
            )
        if self.socket_idle_s <= 0:
            raise ValueError("socket_idle_s must be positive")
        for port in (self.auth_port, self.acct_port):
            if port is not None:
                _check_port(port)
        if self.response_window_s <= 0 or self.check_interval_s <= 0:
            raise ValueError("response_window_s and check_interval_s must be positive")
        if not 0 < self.check_timeout_s <= self.check_interval_s:
            raise ValueError("check_timeout_s must be positive and at most check_interval_s")
        if self.answers_to_alive < 1:
            raise ValueError("answers_to_alive must be at least 1")


DEFAULT_CLIENT_RATE = 2.0


class ClientConfig(Base, frozen=True, kw_only=True):
    """One AAA client (NAS or site proxy) and how its agent behaves.

    ``transport`` is how notices reach it: over the bus (``nats``), as a
    RADIUS CoA-Request to ``ip``:``coa_port`` (``radius-coa``), or as an
    ICMP Echo Request to ``ip`` (``icmp-echo``; needs root or CAP_NET_RAW on
    both ends).

    ``rate`` is the agent's own synthetic load (Access-Requests per second as
    ``user``), for demos and tests: 2 by default, none by default for a
    client with a ``proxy``, whose load is the NAS traffic it relays.

    ``secret`` is its RADIUS shared secret: it signs what the agent publishes
    and authenticates notices and CoA to it. ``verify_secrets`` verify and never
    sign, as ``bus.verify_keys`` do for the bus key: what the agent publishes,
    the notices it takes and their CoA-Requests verify under any of them, so the
    secret rotates with no pause (add the new one here everywhere; then make it
    ``secret`` and move the old one here; then drop the old one). RADIUS to the
    home servers (the agent's load, its proxy's upstreams) uses ``secret`` alone.
    """

    id: str
    ip: str = "127.0.0.1"
    secret: Secret
    verify_secrets: list[Secret] = msgspec.field(default_factory=list)
    home: str
    alternates: list[str] = msgspec.field(default_factory=list)
    alternates_from: Literal["client", "notice"] = "client"
    group: str = ""
    site: str = ""
    priority: int = 100
    rate: float | None = None
    user: str = "alice"
    password: str = "wonderland"
    request_timeout_s: float = 1.0
    request_retries: int = 2
    return_after_s: float = 30.0
    return_jitter: float = 0.2
    legacy_authenticator: bool = False
    transport: Literal["nats", "radius-coa", "icmp-echo"] = "nats"
    coa_port: int = 3799
    proxy: ProxyConfig | None = None

    def __post_init__(self) -> None:
        check_token(self.id, "client id")
        if self.rate is not None and self.rate < 0:
            raise ValueError("rate must not be negative")
        if not 0 <= self.return_jitter < 1:
            raise ValueError("return_jitter must be in [0, 1)")

    @property
    def own_rate(self) -> float:
        """The agent's own synthetic Access-Requests per second (see ``rate``)."""
        if self.rate is not None:
            return self.rate
        return 0.0 if self.proxy is not None else DEFAULT_CLIENT_RATE


class CollectorConfig(Base, frozen=True, kw_only=True):
    """How often each server is sampled, and how long a Status-Server probe may take."""

    interval_s: float = 0.5
    status_timeout_s: float = 0.25

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if not 0 < self.status_timeout_s < self.interval_s:
            raise ValueError("status_timeout_s must be positive and below interval_s")


class EvaluatorConfig(Base, frozen=True, kw_only=True):
    """Thresholds, hysteresis and how health is made.

    The ``clients`` part is the share of the clients' requests (their agents'
    reports of the last ``clients_window_s``) not answered within their
    response window, against ``clients_tolerance``; it needs at least
    ``clients_min_requests`` requests in the window.

    Predictive onset (off while ``predict_horizon_s`` is 0): a sample between
    the thresholds also counts towards ``failover_samples`` when the least
    squares line through the last ``predict_samples`` healths falls by at
    least ``predict_min_drop`` across them, health fell since the previous
    sample, and the line reaches ``failover_threshold`` within
    ``predict_horizon_s`` from now (docs/incidents.md, Predictive onset).
    """

    failover_threshold: float = 0.2
    connection_threshold: float = 0.6
    failover_samples: int = 2
    recovery_samples: int = 3
    rule: Literal["min", "weighted"] = "min"
    weights: HealthWeights = HealthWeights()
    max_processes: int = 4096
    clients_window_s: float = 3.0
    clients_tolerance: float = 0.25
    clients_min_requests: int = 10
    predict_horizon_s: float = 0.0
    predict_samples: int = 5
    predict_min_drop: float = 0.1

    def __post_init__(self) -> None:
        if self.clients_window_s <= 0 or not 0 < self.clients_tolerance <= 1:
            raise ValueError("clients_window_s must be positive, clients_tolerance in (0, 1]")
        if self.clients_min_requests < 1:
            raise ValueError("clients_min_requests must be at least 1")
        if not 0 <= self.failover_threshold <= 1:
            raise ValueError("failover_threshold must be in [0, 1]")
        if not 0 <= self.connection_threshold <= 1:
            raise ValueError("connection_threshold must be in [0, 1]")
        if self.failover_threshold >= self.connection_threshold:
            raise ValueError(
                f"failover_threshold ({self.failover_threshold}) must be below "
                f"connection_threshold ({self.connection_threshold})"
            )
        if self.failover_samples < 1 or self.recovery_samples < 1:
            raise ValueError("failover_samples and recovery_samples must be at least 1")
        if not 0 <= self.predict_horizon_s < float("inf"):
            raise ValueError("predict_horizon_s must be 0 (off) or a positive number of seconds")
        if self.predict_samples < 3:
            raise ValueError("predict_samples must be at least 3")
        if not 0 <= self.predict_min_drop <= 1:
            raise ValueError("predict_min_drop must be in [0, 1]")

    def health_rule(self, server: ServerConfig) -> HealthRule:
        """The server's own health rule, or the evaluator's default one."""
        return server.health or HealthRule(rule=self.rule, weights=self.weights)


TargetingPolicy = Literal["all", "list", "group", "topology"]


class TargeterConfig(Base, frozen=True, kw_only=True):
    """Which clients move, in what order, how many, and where to."""

    policy: list[TargetingPolicy] = msgspec.field(default_factory=lambda: ["all"])
    clients: list[str] = msgspec.field(default_factory=list)
    groups: list[str] = msgspec.field(default_factory=list)
    topology: Literal["nearest", "site"] = "nearest"
    sites: list[str] = msgspec.field(default_factory=list)
    max_share: float = 0.5
    gain: float = 1.0
    step_interval_s: float = 5.0
    replan_after_s: float = 15.0
    default_capacity_rps: float = 1000.0

    def __post_init__(self) -> None:
        if not self.policy:
            raise ValueError("policy must name at least one of all, list, group, topology")
        if len(set(self.policy)) != len(self.policy):
            raise ValueError("policy names a policy twice")
        if "list" in self.policy and not self.clients:
            raise ValueError("policy 'list' needs `clients`")
        if not 0 < self.max_share <= 1:
            raise ValueError("max_share must be in (0, 1]")
        if self.gain <= 0:
            raise ValueError("gain must be positive")
        if self.step_interval_s < 0:
            raise ValueError("step_interval_s must not be negative")
        if self.replan_after_s <= 0:
            raise ValueError("replan_after_s must be positive")
        if self.default_capacity_rps <= 0:
            raise ValueError("default_capacity_rps must be positive")


class NotifierConfig(Base, frozen=True, kw_only=True):
    """Notice delivery: ack timeout and retries (RFC 5080 style back-off for CoA).

    The CoA settings must make a back-off: a positive first wait, no negative
    retries, and a maximum wait no shorter than the first.
    """

    ack_timeout_s: float = 2.0
    retries: int = 3
    notice_validity_s: float = 300.0
    coa_timeout_s: float = 2.0
    coa_retries: int = 3
    coa_max_timeout_s: float = 16.0

    def __post_init__(self) -> None:
        if self.ack_timeout_s <= 0:
            raise ValueError("ack_timeout_s must be positive")
        if self.retries < 0:
            raise ValueError("retries must not be negative")
        if self.coa_timeout_s <= 0:
            raise ValueError("coa_timeout_s must be positive")
        if self.coa_retries < 0:
            raise ValueError("coa_retries must not be negative")
        if self.coa_max_timeout_s < self.coa_timeout_s:
            raise ValueError("coa_max_timeout_s must be at least coa_timeout_s")


class ReadmitterConfig(Base, frozen=True, kw_only=True):
    """Readmission in waves (services/readmitter/waves.py, services/readmitter/sizing.py).

    ``sizing``: ``adaptive`` sizes each wave by what the previous one cost
    (``first_wave_size`` first, then at most ``growth`` times the previous
    wave and at most ``max_wave_size``, so that health is expected to stay
    ``margin`` above the connection threshold); ``fixed`` sends ``wave_size``
    clients a wave. ``settle_reports``: the health reports an adaptive wave
    waits for after the previous one, to measure its cost, counted from
    ``settle_s`` after it (a wave's load shows in health only as its clients'
    requests arrive and the server's figures catch up). ``confirm_timeout_s``:
    how long after its wave a readmitted client not yet heard home holds the
    final wave (which closes the incident) back.
    """

    sizing: Literal["adaptive", "fixed"] = "adaptive"
    wave_size: int = 5
    first_wave_size: int = 2
    max_wave_size: int = 100
    growth: float = 4.0
    margin: float = 0.1
    settle_reports: int = 2
    settle_s: float = 2.0
    wave_interval_s: float = 5.0
    retry_after_s: float = 10.0
    confirm_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.wave_size < 1:
            raise ValueError("wave_size must be at least 1")
        if not 1 <= self.first_wave_size <= self.max_wave_size:
            raise ValueError("first_wave_size must be at least 1 and at most max_wave_size")
        if self.growth < 1:
            raise ValueError("growth must be at least 1")
        if not 0 <= self.margin < 1:
            raise ValueError("margin must be in [0, 1)")
        if self.settle_reports < 1:
            raise ValueError("settle_reports must be at least 1")
        if self.settle_s < 0:
            raise ValueError("settle_s must not be negative")
        if self.wave_interval_s < 0:
            raise ValueError("wave_interval_s must not be negative")
        if self.retry_after_s <= 0:
            raise ValueError("retry_after_s must be positive")
        if self.confirm_timeout_s < 0:
            raise ValueError("confirm_timeout_s must not be negative")


class AgentConfig(Base, frozen=True, kw_only=True):
    """The client-side agent's own settings (each client's are in its ``[[clients]]``).

    ``state_dir`` (relative to the config file) holds one file per client
    with what it must remember across a restart: where it is, the last notice
    and sequence number it accepted, its timers. Written before each ack.
    ``status_interval_s``: how often each client's ``ClientStatus`` goes out
    (a change of upstream sends one at once too).
    """

    state_dir: str = "agent-state"
    status_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.state_dir.strip():
            raise ValueError("state_dir must name a folder")
        if self.status_interval_s <= 0:
            raise ValueError("status_interval_s must be positive")


class MetricsConfig(Base, frozen=True, kw_only=True):
    """Prometheus /metrics endpoints: where to listen, and each service's port.

    A service with no port here serves no metrics; port 0 picks a free one.
    """

    listen: str = "127.0.0.1"
    ports: dict[str, int] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for service, port in self.ports.items():
            if not 0 <= port <= 65535:
                raise ValueError(f"ports.{service} must be in [0, 65535], got {port}")

    def port(self, service: str) -> int | None:
        """The port ``service`` serves metrics on (0: a free one), or None for none."""
        return self.ports.get(service)


class Config(Base, frozen=True, kw_only=True):
    """A whole deployment: the bus, the farm and every service's settings."""

    bus: BusConfig
    servers: list[ServerConfig] = msgspec.field(default_factory=list)
    clients: list[ClientConfig] = msgspec.field(default_factory=list)
    collector: CollectorConfig = CollectorConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    targeter: TargeterConfig = TargeterConfig()
    notifier: NotifierConfig = NotifierConfig()
    readmitter: ReadmitterConfig = ReadmitterConfig()
    agent: AgentConfig = AgentConfig()
    metrics: MetricsConfig = MetricsConfig()
    base_dir: str = ""

    def __post_init__(self) -> None:
        server_ids = [s.id for s in self.servers]
        _no_repeats(server_ids, "server id")
        _no_repeats([c.id for c in self.clients], "client id")
        known = set(server_ids)
        for client in self.clients:
            for sid in (client.home, *client.alternates):
                if sid not in known:
                    raise ValueError(f"client {client.id!r} names unknown server {sid!r}")
            if client.home in client.alternates:
                raise ValueError(f"client {client.id!r} lists its home among its alternates")
        unknown = set(self.targeter.clients) - {c.id for c in self.clients}
        if unknown:
            raise ValueError(f"targeter.clients names unknown clients {sorted(unknown)}")

    def with_metrics_port(self, service: str, port: int) -> Config:
        """This config with ``service`` serving metrics on ``port`` (0: a free one)."""
        ports = {**self.metrics.ports, service: port}
        return msgspec.structs.replace(
            self, metrics=msgspec.structs.replace(self.metrics, ports=ports)
        )

    def on_bus(self, url: str) -> Config:
        """This config on the bus at ``url``."""
        return msgspec.structs.replace(self, bus=msgspec.structs.replace(self.bus, url=url))

    def as_sandbox(self, prefix: str) -> Config:
        """This config as a replay sandbox under ``prefix``.

        A sandbox's services accept events of any age (recorded ones keep
        their original times) and still reject repeated ids. ``prefix`` must
        not overlap the live prefix, so nothing replayed reaches live subjects,
        and every client is reached over the bus alone: a sandbox's notifier
        sends no CoA or ICMP to real clients. Its readmitter does not wait for
        readmitted clients to be heard home before the final wave
        (``confirm_timeout_s`` 0): its clients are a recording, which says
        nothing of the sandbox's own waves.
        """
        if overlaps(prefix, self.bus.prefix):
            raise ConfigError(
                f"sandbox prefix {prefix!r} overlaps the live prefix {self.bus.prefix!r}"
            )
        try:
            bus = msgspec.structs.replace(self.bus, prefix=prefix, sandbox=True)
        except ValueError as exc:
            raise ConfigError(f"sandbox prefix: {exc}") from None
        clients = [msgspec.structs.replace(c, transport="nats") for c in self.clients]
        readmitter = msgspec.structs.replace(self.readmitter, confirm_timeout_s=0.0)
        return msgspec.structs.replace(self, bus=bus, clients=clients, readmitter=readmitter)

    def select_servers(self, only: Sequence[str] | None) -> list[ServerConfig]:
        """The servers named in ``only`` (every server without it); ConfigError if unknown."""
        return _select(self.servers, only, "server")

    def select_clients(self, only: Sequence[str] | None) -> list[ClientConfig]:
        """The clients named in ``only`` (every client without it); ConfigError if unknown."""
        return _select(self.clients, only, "client")

    def server(self, server_id: str) -> ServerConfig:
        for server in self.servers:
            if server.id == server_id:
                return server
        raise KeyError(server_id)

    def client(self, client_id: str) -> ClientConfig:
        for client in self.clients:
            if client.id == client_id:
                return client
        raise KeyError(client_id)

    def path(self, relative: str) -> Path:
        """A path from the config file, resolved against the file's folder."""
        path = Path(relative)
        return path if path.is_absolute() else Path(self.base_dir) / path

    def read_secret(self, secret: Secret) -> bytes:
        """The secret's bytes; raises ConfigError naming what is missing."""
        if secret.env is not None:
            value = os.environ.get(secret.env)
            if not value:
                raise ConfigError(f"secret: environment variable {secret.env} is not set")
            return value.encode()
        assert secret.file is not None
        path = self.path(secret.file)
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"secret: cannot read {path}: {exc.strerror}") from None
        if not text:
            raise ConfigError(f"secret: {path} is empty")
        return text.encode()


_Named = TypeVar("_Named", ServerConfig, ClientConfig)


def subject_tokens(only: Sequence[str] | None) -> list[str]:
    """What a service subscribes to per server or client: each named one, or all (``*``)."""
    return list(only) if only else ["*"]


def _select(items: list[_Named], only: Sequence[str] | None, what: str) -> list[_Named]:
    if not only:
        return list(items)
    unknown = sorted(set(only) - {item.id for item in items})
    if unknown:
        raise ConfigError(f"--only names unknown {what}s {unknown}")
    return [item for item in items if item.id in set(only)]


def _no_repeats(values: list[str], what: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} appears twice")
        seen.add(value)


def parse_config(text: str, base_dir: str | Path = ".") -> Config:
    """Decode TOML text into a Config; raises ConfigError with one line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    data["base_dir"] = str(base_dir)
    if isinstance(data.get("bus"), dict):
        data["bus"]["base_dir"] = str(base_dir)
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None


def load_config(path: str | Path) -> Config:
    """Read and check the config file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_config(text, path.resolve().parent)

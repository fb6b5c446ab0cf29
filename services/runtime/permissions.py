"""Who may do what on the bus: one NATS user per service, allowed only its own subjects.

Pure functions, no I/O. :data:`USES` says, per service of the registry
(services/launch/registry.py reads it as ``Service.bus``), which kinds of
subject it publishes and subscribes to (schemas/subjects.py), which KV
buckets it keeps and whether it creates the prefix's stream. :func:`users`
turns that, the prefix and the clients of a config into every user's NATS
permissions, as the nats-server configuration of `up` and of compose holds
them (services/runtime/natsserver.py renders them).

The users:

- one per service (``collector``, ``evaluator``, ...): publish its own kinds,
  subscribe its own kinds, and the JetStream API of its own stream and buckets
  only, its replies on its own inbox (``_INBOX.<user>.>``);
- ``agent`` (or each user of ``bus.auth.agents``): its clients' notices,
  their acks and status, and readmission requests to their home servers; no
  JetStream at all;
- ``tools`` (tail, replay's timeline, what-if, report): read every subject of
  the prefix and read the stream; publish nothing else;
- ``sandbox`` (replay sandboxes and the services run in them): read the live
  prefix and its stream, write anything but the live prefix, its stream and
  its buckets;
- ``harness``: the operator's and the tests' administrator, unrestricted.

A process connects as the user :func:`user_for` names: its own service, else
``tools``, ``sandbox`` or ``harness`` by what it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from schemas.subjects import CLIENT_KINDS, Subjects

ANY = "*"

TOOLS = "tools"
SANDBOX = "sandbox"
HARNESS = "harness"
AGENT = "agent"

TOOL_NAMES = frozenset({"tail", "recording", "report", "what-if"})
"""Connection names of the operator tools that only read."""
SANDBOX_NAMES = frozenset({"replay"})
"""Connection names that read the live prefix and write a sandbox's."""

INBOX = "_INBOX"


@dataclass(frozen=True)
class BusUse:
    """What one service does on the bus.

    ``publishes`` and ``subscribes``: kinds of subject (``metrics``, ``plan``, ...).
    ``buckets``: its KV buckets (``<STREAM>_<bucket>``). ``stream``: it makes
    sure the prefix's stream exists. ``own_clients``: its subjects are those of
    the clients it serves (client kinds by client id; server kinds by each
    client's home server), not every server's and client's. ``consumes``: the
    kinds (of those it subscribes to) it takes through durable consumers of its
    own (services/runtime/durable.py). ``recalls``: the kinds (of those it
    publishes) whose last stored event it reads back from the stream as it starts
    (``durable.last_stored``; nats-server lets a user read stored messages by
    stream, not by subject). ``leased``: exactly one replica acts, the one
    holding its lease (services/runtime/lease.py).
    """

    publishes: tuple[str, ...] = ()
    subscribes: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()
    recalls: tuple[str, ...] = ()
    leased: bool = False
    buckets: tuple[str, ...] = ()
    stream: bool = False
    own_clients: bool = False

    @property
    def jetstream(self) -> bool:
        return self.stream or bool(self.buckets)


USES: Mapping[str, BusUse] = {
    "aaa": BusUse(subscribes=("control",)),
    "collector": BusUse(publishes=("metrics",), buckets=("collector",), stream=True, leased=True),
    "evaluator": BusUse(
        publishes=("health", "incident"),
        subscribes=("metrics", "readmit", "status"),
        consumes=("readmit",),
        recalls=("incident",),
        buckets=("evaluator",),
        stream=True,
        leased=True,
    ),
    "targeter": BusUse(
        publishes=("plan",),
        subscribes=("incident", "health", "status", "ack"),
        consumes=("incident",),
        buckets=("targeter", "registry"),
        stream=True,
        leased=True,
    ),
    "notifier": BusUse(
        publishes=("notice", "delivery"),
        subscribes=("plan", "readmit", "ack"),
        consumes=("plan", "readmit"),
        buckets=("notifier",),
        stream=True,
    ),
    "readmitter": BusUse(
        publishes=("readmit",),
        subscribes=("health", "incident", "plan", "request", "status", "ack", "delivery"),
        consumes=("incident", "plan"),
        buckets=("readmitter",),
        stream=True,
        leased=True,
    ),
    "agent": BusUse(
        publishes=("ack", "status", "request"), subscribes=("notice",), own_clients=True
    ),
}
"""Every service's use of the bus, by service name (the registry's names)."""


def leased(service: str) -> bool:
    """Whether exactly one replica of ``service`` acts, under a lease."""
    use = USES.get(service)
    return use is not None and use.leased


def uses_stream(service: str) -> bool:
    """Whether ``service`` makes sure the prefix's stream exists (unknown names do)."""
    use = USES.get(service)
    return True if use is None else use.stream


@dataclass(frozen=True)
class Permissions:
    """A NATS user's permissions: subjects it may publish and subscribe to, and exceptions.

    ``None`` for ``publish`` and ``subscribe``: no restriction (the harness).
    """

    publish: tuple[str, ...] | None
    subscribe: tuple[str, ...] | None
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()

    def as_nats(self) -> dict[str, object] | None:
        """The ``permissions`` block of a user in the nats-server config (None: none)."""
        if self.publish is None and self.subscribe is None:
            return None
        out: dict[str, object] = {}
        for name, allow, deny in (
            ("publish", self.publish, self.publish_deny),
            ("subscribe", self.subscribe, self.subscribe_deny),
        ):
            block: dict[str, list[str]] = {}
            if allow is not None:
                block["allow"] = list(allow)
            if deny:
                block["deny"] = list(deny)
            if block:
                out[name] = block
        return out


@dataclass(frozen=True)
class Client:
    """What the permissions need of a client: its id and its home server."""

    id: str
    home: str


class Scope:
    """The subjects, stream and buckets of one prefix; or of any prefix (``prefix=None``).

    Any prefix is what one nats-server shared by many farms under their own
    prefixes needs (the test suite's): every prefix, stream and bucket token
    is then a wildcard, and the restriction by kind of subject remains.
    """

    def __init__(self, prefix: str | None) -> None:
        self.any = prefix is None
        self.subjects = Subjects(ANY if prefix is None else prefix)
        self.stream = ANY if self.any else self.subjects.stream_name()

    def subject(self, kind: str, token: str = ANY) -> str:
        return f"{self.subjects.prefix}.{kind}.{token}"

    def bucket(self, bucket: str) -> str:
        """The KV bucket's name (``AAA_collector``)."""
        return ANY if self.any else f"{self.stream}_{bucket}"

    def bucket_stream(self, bucket: str) -> str:
        """The stream that holds the KV bucket (``KV_AAA_collector``)."""
        return ANY if self.any else f"KV_{self.stream}_{bucket}"


def durable_name(service: str, kind: str, token: str = ANY) -> str:
    """The durable consumer of ``service`` for ``kind``: of every server (``token`` ``*``),
    or of one (a replica given ``--only``)."""
    return f"{service}-{kind}" if token == ANY else f"{service}-{kind}-{token}"


def inbox(user: str) -> str:
    """The inbox prefix of ``user``'s connection: its replies come only there."""
    return f"{INBOX}.{user}"


def _kv_api(scope: Scope, bucket: str) -> list[str]:
    """What nats-py's KeyValue calls publish for one bucket: open or create it
    (stream info, create; update, to its number of replicas), get (direct get or
    message get), put, delete and purge (``$KV.<bucket>.<key>``), and keys (an
    ordered push consumer: create, info, delete, its flow control replies)."""
    name, stream = scope.bucket(bucket), scope.bucket_stream(bucket)
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
        f"$KV.{name}.>",
    ]


def _lease_api(scope: Scope, service: str) -> list[str]:
    """Open or create the bucket of leases and read any lease; write only its own (the
    key of its role: ``<service>``, or ``<service>.<servers>`` with ``--only``)."""
    name, stream = scope.bucket("leases"), scope.bucket_stream("leases")
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.UPDATE.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$KV.{name}.{service}",
        f"$KV.{name}.{service}.>",
    ]


def _stream_api(scope: Scope) -> list[str]:
    """Create, update and look at the prefix's stream (``Bus.ensure_stream``)."""
    return [
        f"$JS.API.STREAM.INFO.{scope.stream}",
        f"$JS.API.STREAM.CREATE.{scope.stream}",
        f"$JS.API.STREAM.UPDATE.{scope.stream}",
    ]


def _stream_reading(scope: Scope) -> list[str]:
    """Read the prefix's stream through a consumer of its own (services/tools/recording.py)."""
    s = scope.stream
    return [
        f"$JS.API.STREAM.INFO.{s}",
        f"$JS.API.STREAM.MSG.GET.{s}",
        f"$JS.API.CONSUMER.CREATE.{s}",
        f"$JS.API.CONSUMER.CREATE.{s}.>",
        f"$JS.API.CONSUMER.INFO.{s}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{s}.>",
        f"$JS.API.CONSUMER.DELETE.{s}.>",
        f"$JS.FC.{s}.>",
    ]


def _consumer_api(
    scope: Scope, service: str, kinds: Iterable[str], servers: Sequence[str] | None
) -> list[str]:
    """Create, pull from and acknowledge the service's own durable consumers, each filtered
    on one kind of subject it may subscribe to (of every server, or of one)."""
    s = scope.stream
    out: list[str] = []
    for kind in kinds:
        for token in [ANY, *(servers or ())]:
            name = durable_name(service, kind, token)
            out += [
                f"$JS.API.CONSUMER.CREATE.{s}.{name}.{scope.subject(kind, token)}",
                f"$JS.API.CONSUMER.INFO.{s}.{name}",
                f"$JS.API.CONSUMER.MSG.NEXT.{s}.{name}",
                f"$JS.ACK.{s}.{name}.>",
            ]
    return out


def _tokens(kind: str, use: BusUse, clients: Sequence[Client] | None) -> list[str]:
    if not use.own_clients or clients is None:
        return [ANY]
    if kind in CLIENT_KINDS:
        return sorted({c.id for c in clients})
    return sorted({c.home for c in clients})


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def service_permissions(
    use: BusUse,
    scope: Scope,
    user: str,
    clients: Sequence[Client] | None = None,
    servers: Sequence[str] | None = None,
) -> Permissions:
    """The permissions of a service's user: its kinds of subject (of its own clients, for
    a service that serves some), and the JetStream API of its stream, its buckets and
    its durable consumers.

    ``clients``: the clients a service with ``own_clients`` serves (None: any client).
    ``servers``: the farm's servers, whose own consumers a replica given ``--only``
    uses (None: only the consumers of every server).
    """
    publish = [scope.subject(k, t) for k in use.publishes for t in _tokens(k, use, clients)]
    subscribe = [scope.subject(k, t) for k in use.subscribes for t in _tokens(k, use, clients)]
    if use.jetstream:
        if use.stream:
            publish += _stream_api(scope)
        if use.recalls:
            publish.append(f"$JS.API.STREAM.MSG.GET.{scope.stream}")
        for bucket in use.buckets:
            publish += _kv_api(scope, bucket)
        publish += _consumer_api(scope, user, use.consumes, servers)
        if use.leased:
            publish += _lease_api(scope, user)
        subscribe.append(f"{inbox(user)}.>")
    return Permissions(_unique(publish), _unique(subscribe))


def tools_permissions(scope: Scope) -> Permissions:
    """Read every subject of the prefix, and its stream; publish nothing but those reads."""
    return Permissions(
        _unique(_stream_reading(scope)),
        (scope.subjects.all, f"{inbox(TOOLS)}.>"),
    )


def sandbox_permissions(scope: Scope, buckets: Iterable[str]) -> Permissions:
    """Read the live prefix and its stream; write anything else (a sandbox's prefix, its
    stream and buckets), never the live prefix, its stream or its buckets. Of any prefix
    (a shared test server) there is no live one to keep out: unrestricted."""
    if scope.any:
        return Permissions(None, None)
    deny = [scope.subjects.all, f"$JS.API.STREAM.*.{scope.stream}"]
    deny.append(f"$JS.API.STREAM.MSG.DELETE.{scope.stream}")
    for bucket in buckets:
        stream = scope.bucket_stream(bucket)
        deny += [
            f"$KV.{scope.bucket(bucket)}.>",
            f"$JS.API.STREAM.*.{stream}",
            f"$JS.API.STREAM.MSG.*.{stream}",
        ]
    return Permissions((">",), (">",), publish_deny=_unique(deny))


def users(
    prefix: str | None,
    clients: Sequence[Client] | None = None,
    agents: Mapping[str, Sequence[str]] | None = None,
    servers: Sequence[str] | None = None,
) -> dict[str, Permissions]:
    """Every user of a bus and its permissions.

    ``prefix``: the live prefix (None: any prefix, see :class:`Scope`).
    ``clients``: the farm's clients (None: any client). ``agents``: agent users
    and the clients each serves (``bus.auth.agents``); without them one user,
    ``agent``, serves every client. Raises ValueError for an agent user given
    a client the farm does not have. ``servers``: the farm's servers (see
    :func:`service_permissions`).
    """
    scope = Scope(prefix)
    out: dict[str, Permissions] = {}
    for name, use in USES.items():
        if name == AGENT:
            continue
        out[name] = service_permissions(use, scope, name, servers=servers)
    for user, served in agent_users(clients, agents).items():
        out[user] = service_permissions(USES[AGENT], scope, user, served)
    out[TOOLS] = tools_permissions(scope)
    buckets = [b for use in USES.values() for b in use.buckets] + ["leases"]
    out[SANDBOX] = sandbox_permissions(scope, buckets)
    out[HARNESS] = Permissions(None, None)
    return out


def agent_users(
    clients: Sequence[Client] | None, agents: Mapping[str, Sequence[str]] | None
) -> dict[str, list[Client] | None]:
    """Each agent user and the clients it serves (None: any client)."""
    if not agents:
        return {AGENT: None if clients is None else list(clients)}
    if clients is None:
        return {user: [Client(cid, ANY) for cid in served] for user, served in agents.items()}
    by_id = {c.id: c for c in clients}
    out: dict[str, list[Client] | None] = {}
    for user, served in agents.items():
        unknown = sorted(set(served) - set(by_id))
        if unknown:
            raise ValueError(f"agent user {user!r} names unknown clients {unknown}")
        out[user] = [by_id[cid] for cid in served]
    return out


def agent_user_for(agents: Mapping[str, Sequence[str]] | None, served: Iterable[str]) -> str:
    """The agent user that serves every client in ``served``: ``agent`` without
    ``agents``, else the first of ``agents`` that holds them all. ValueError if none does."""
    if not agents:
        return AGENT
    wanted = set(served)
    for user, clients in agents.items():
        if wanted <= set(clients):
            return user
    raise ValueError(f"no agent user of bus.auth.agents serves all of {sorted(wanted)}")


def user_for(name: str, *, sandbox: bool = False) -> str:
    """The user a connection named ``name`` (a service, a tool, else the operator's own:
    the harness) joins the bus as; in a replay sandbox, ``sandbox``."""
    if sandbox or name in SANDBOX_NAMES:
        return SANDBOX
    if name in USES:
        return name
    if name in TOOL_NAMES:
        return TOOLS
    return HARNESS

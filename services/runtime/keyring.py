"""The keys a process signs and verifies with, and what each key may sign.

Three kinds of key:

- a service's own keys (``bus.service_keys.<service>``: the first signs,
  every one verifies, so a new key is accepted before it signs and the old
  one retired after). A service's key may sign only the kinds of subject
  that service publishes (:data:`services.runtime.permissions.USES`): the
  collector's key cannot sign a plan.
- the shared bus key (``bus.key``, with ``bus.verify_keys`` during its
  rotation): it signs for every service with no key of its own, and what no
  service publishes (``control``, the demo's and the tests' orders to the
  reference servers); never a kind a service signs with its own key.
- a client's secret (``client:<id>``): acks, statuses and readmission
  requests only, and only its own (the ``client`` field must be ``<id>``).
  While it rotates, ``client:<id>`` verifies under each of its secrets
  (``secret``, then ``verify_secrets``); a client with one secret costs one
  HMAC per event, as a bus key does.

What a process holds (:meth:`Keyring.from_config`): a service, its own
signing key and the keys of those that publish what it subscribes to or
reads back from the stream, with
the clients' secrets only if it takes what clients sign; the operator's
tools and the harness, every key (each subject is then signed with the key
of the service that publishes it).

No I/O but reading the secrets the config names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.signing import CLIENT_KEY_PREFIX, Keys, sandbox_key
from schemas.subjects import CLIENT_KINDS, SERVER_KINDS, kind_of
from services.runtime.config import BusKey, Config, ConfigError
from services.runtime.permissions import AGENT, USES

ALL_KINDS = frozenset(CLIENT_KINDS | SERVER_KINDS)
CLIENT_SIGNED = frozenset(USES[AGENT].publishes)
"""The kinds of subject a client's own secret may sign: its acks, status and requests."""


@dataclass(frozen=True)
class Signer:
    """A key to sign with: a service's key, the shared bus key, or a client's own secret."""

    key_id: str
    key: bytes


@dataclass
class Keyring:
    """Keys that sign and verify: bus keys by id, and clients' secrets.

    ``signer`` signs what ``signers`` (by kind of subject) does not name.
    ``allowed`` lists, for each restricted key id, the kinds of subject it may
    sign (a key not in it may sign any). A client's secret verifies only what
    that client says of itself, on its own kinds of subject: under its secret
    (``client_keys``) or, while it rotates, one of the secrets that only verify
    (``client_verify_keys``).
    """

    signer: Signer | None
    bus_keys: dict[str, bytes] = field(default_factory=dict)
    client_keys: dict[str, bytes] = field(default_factory=dict)
    signers: dict[str, Signer] = field(default_factory=dict)
    allowed: dict[str, frozenset[str]] = field(default_factory=dict)
    client_verify_keys: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    _with_clients: dict[str, Keys] | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_config(cls, config: Config, service: str | None = None) -> Keyring:
        """What ``service`` holds (see the module); with no service (or a name that is not
        one: a tool, the harness), every key. In a replay sandbox, the sandbox's own key."""
        bus = config.bus
        keys = _Keys(config)
        if bus.sandbox:
            shared = keys.shared()
            return cls(
                Signer(shared[0][0], shared[0][1]),
                {},
                keys.clients(),
                client_verify_keys=keys.clients_verify(),
            ).for_sandbox(bus.prefix)
        if service is None or service not in USES or service == AGENT:
            return keys.everything()
        return keys.of_service(service)

    def for_sandbox(self, prefix: str) -> Keyring:
        """The keyring of a replay sandbox under ``prefix``: it signs and verifies with the
        sandbox's key alone (:func:`~schemas.signing.sandbox_key`), which no live service
        accepts, so nothing a sandbox decides can be copied onto live subjects and act."""
        if self.signer is None:
            raise ConfigError("a sandbox's key is derived from the bus key: none is configured")
        key_id, key = sandbox_key(self.signer.key, prefix)
        return Keyring(
            Signer(key_id, key),
            {key_id: key},
            dict(self.client_keys),
            client_verify_keys=dict(self.client_verify_keys),
        )

    def signer_for(self, subject: str) -> Signer | None:
        """The key to sign an event on ``subject`` with."""
        if self.signers:
            return self.signers.get(kind_of(subject), self.signer)
        return self.signer

    def verification_keys(self, accept_clients: bool) -> Mapping[str, Keys]:
        """The keys an event may be signed with; built once, looked up per event. A client
        with secrets that only verify maps to all its secrets, its signing one first."""
        if accept_clients:
            if self._with_clients is None:
                with_clients: dict[str, Keys] = dict(self.bus_keys)
                for cid, key in self.client_keys.items():
                    more = self.client_verify_keys.get(cid, ())
                    with_clients[CLIENT_KEY_PREFIX + cid] = (key, *more) if more else key
                self._with_clients = with_clients
            return self._with_clients
        return self.bus_keys

    def may_sign(self, key_id: str, subject: str) -> bool:
        """Whether the key ``key_id`` may sign an event on ``subject``."""
        if key_id.startswith(CLIENT_KEY_PREFIX):
            return kind_of(subject) in CLIENT_SIGNED
        kinds = self.allowed.get(key_id)
        return kinds is None or kind_of(subject) in kinds


class _Keys:
    """The keys a config names, read only when asked for."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bus = config.bus
        unknown = sorted(set(self.bus.service_keys) - (set(USES) - {AGENT}))
        if unknown:
            raise ConfigError(
                f"bus.service_keys: {', '.join(unknown)} not a service that signs "
                f"(one of {', '.join(sorted(set(USES) - {AGENT}))})"
            )
        # the kinds each keyed service publishes; the shared key may sign all the others
        self.owned = {s: frozenset(USES[s].publishes) for s in self.bus.service_keys}
        taken = frozenset().union(*self.owned.values()) if self.owned else frozenset()
        self.shared_kinds = ALL_KINDS - taken - CLIENT_SIGNED

    def _read(self, keys: list[BusKey]) -> list[tuple[str, bytes]]:
        return [(k.id, self.config.read_secret(k.secret)) for k in keys]

    def shared(self) -> list[tuple[str, bytes]]:
        if self.bus.key is None:
            raise ConfigError("bus.key is required by every service but the agent")
        return self._read([self.bus.key, *self.bus.verify_keys])

    def clients(self) -> dict[str, bytes]:
        return {c.id: self.config.read_secret(c.secret) for c in self.config.clients}

    def clients_verify(self) -> dict[str, tuple[bytes, ...]]:
        """Each rotating client's secrets that verify but do not sign."""
        return {
            c.id: tuple(self.config.read_secret(s) for s in c.verify_secrets)
            for c in self.config.clients
            if c.verify_secrets
        }

    def _allowed(self) -> dict[str, frozenset[str]]:
        """Every restricted key id and the kinds it may sign."""
        if not self.owned:
            return {}  # one shared key for all: it signs anything
        allowed = {k.id: self.shared_kinds for k in [self.bus.key, *self.bus.verify_keys] if k}
        for service, keys in self.bus.service_keys.items():
            allowed.update({k.id: self.owned[service] for k in keys})
        return allowed

    def everything(self) -> Keyring:
        """Every key: the operator's tools and the harness."""
        shared = self.shared()
        keys = dict(shared)
        signers: dict[str, Signer] = {}
        for service, service_keys in self.bus.service_keys.items():
            read = self._read(service_keys)
            keys.update(read)
            for kind in self.owned[service]:
                signers[kind] = Signer(*read[0])
        return Keyring(
            Signer(*shared[0]),
            keys,
            self.clients(),
            signers,
            self._allowed(),
            self.clients_verify(),
        )

    def of_service(self, service: str) -> Keyring:
        """What ``service`` holds: its signing key and the keys of what it subscribes to, or
        reads back from the stream as it starts (``recalls``: its own last decisions)."""
        subscribes = frozenset(USES[service].subscribes) | frozenset(USES[service].recalls)
        publishers = {
            s for s, u in USES.items() if s != AGENT and subscribes & frozenset(u.publishes)
        }
        # the shared key: to verify what no keyed service signs, or to sign with
        needs_shared = bool(subscribes & self.shared_kinds) or (
            service not in self.bus.service_keys and bool(USES[service].publishes)
        )
        keys: dict[str, bytes] = {}
        signer: Signer | None = None
        if needs_shared:
            shared = self.shared()
            keys.update(shared)
            signer = Signer(*shared[0])
        for publisher in publishers & set(self.bus.service_keys):
            keys.update(self._read(self.bus.service_keys[publisher]))
        if service in self.bus.service_keys:
            own = self._read(self.bus.service_keys[service])
            signer = Signer(*own[0])
        takes_clients = bool(subscribes & CLIENT_SIGNED)
        clients = self.clients() if takes_clients else {}
        verify = self.clients_verify() if takes_clients else {}
        return Keyring(signer, keys, clients, allowed=self._allowed(), client_verify_keys=verify)

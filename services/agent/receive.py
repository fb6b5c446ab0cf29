"""Whether a received notice is authentic, whatever carried it (bus, CoA, ICMP Echo).

:func:`verify_notice` is the one check every transport's receiver makes: the
authenticator must be right for the exact bytes, under the client's own
shared secret (or, while it rotates, one of its ``verify_secrets``), between
the named server's IP and the client's IP; only then
are the bytes decoded, and the notice must be a failover or readmission
notice of that server for this client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from schemas import codec
from schemas.events import FailoverNotice, ReadmitNotice
from schemas.signing import Rejected, verify_client_authenticator
from services.runtime.config import ClientConfig, ServerConfig

NoticeCallback = Callable[[str, bytes, str | None, str | None], Awaitable[bool]]
"""What a listener calls with each notice it receives: ``on_notice(server_id, payload,
authenticator, content_type)``; True if the agent accepted it (verified and
handled), False if it refused it."""


def verify_notice(
    client: ClientConfig,
    secret: bytes | Sequence[bytes],
    servers: Mapping[str, ServerConfig],
    server_id: str,
    payload: bytes,
    authenticator: str | None,
    content_type: str | None,
) -> FailoverNotice | ReadmitNotice:
    """The notice in ``payload`` if it is authentic and meant for ``client``.

    ``secret`` is the client's secret, or all its secrets while it rotates (its
    ``secret`` first, then its ``verify_secrets``): any one of them verifies.

    Raises Rejected with reason ``unknown-server`` (``server_id`` is not in
    ``servers``), ``unsigned`` or ``bad-authenticator`` (the authenticator is
    missing or wrong; the legacy form if the client is configured for it),
    ``undecodable``, ``unexpected-type`` (an event that is not a notice),
    ``server-mismatch`` (the notice names another server than the one that
    authenticated it) or ``client-mismatch`` (it is addressed to another
    client).
    """
    server = servers.get(server_id)
    if server is None:
        shown = repr(server_id)
        raise Rejected(
            "unknown-server", "server " + (shown[:61] + "..." if len(shown) > 64 else shown)
        )
    verify_client_authenticator(
        secret,
        server.ip,
        client.ip,
        payload,
        authenticator,
        legacy=client.legacy_authenticator,
    )
    try:
        event = codec.decode(payload, content_type)
    except codec.DecodeError as exc:
        raise Rejected("undecodable", str(exc)) from None
    if not isinstance(event, FailoverNotice | ReadmitNotice):
        raise Rejected("unexpected-type", type(event).__name__)
    if event.server != server_id:
        raise Rejected("server-mismatch", f"{event.server!r} authenticated as {server_id!r}")
    if event.client != client.id:
        raise Rejected("client-mismatch", f"for {event.client!r}, not {client.id!r}")
    return event

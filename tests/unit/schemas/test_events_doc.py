"""docs/events.md: its worked notice example matches the notifier's authenticator."""

from __future__ import annotations

from typing import Any

from schemas.signing import client_authenticator
from tests.support.events_doc import code_block


def test_notice_example_matches_the_notifier_authenticator() -> None:
    scope: dict[str, Any] = {}
    exec(compile(code_block("notice_auth.py"), "notice_auth.py", "exec"), scope)
    secret, body = b"client-secret", b'{"type":"notice.failover.v2","seq":1}'
    for legacy in (False, True):
        auth = client_authenticator(secret, "10.0.0.1", "10.0.1.7", body, legacy=legacy)
        assert scope["notice_authenticator"](secret, "10.0.0.1", "10.0.1.7", body, legacy) == auth
        assert scope["notice_ok"](secret, "10.0.0.1", "10.0.1.7", body, auth, legacy)
        assert not scope["notice_ok"](secret, "10.0.0.2", "10.0.1.7", body, auth, legacy)
        assert not scope["notice_ok"](secret, "10.0.0.1", "10.0.1.7", body + b" ", auth, legacy)
        assert not scope["notice_ok"](secret, "10.0.0.1", "10.0.1.7", body, None, legacy)

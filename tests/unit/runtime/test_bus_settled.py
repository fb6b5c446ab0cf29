"""Start-up JetStream requests are made again while JetStream does not answer (a cluster
electing leaders), and give up after a while with the last error."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

from services.runtime.bus import settled


async def test_a_request_is_made_again_until_jetstream_answers() -> None:
    failures: list[Exception] = [
        nats.errors.TimeoutError(),
        nats.errors.NoRespondersError(),
        nats.js.errors.ServiceUnavailableError(),
    ]
    calls = 0

    async def request() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return "bucket"

    assert await settled("bucket t", request, settle_s=10.0) == "bucket"
    assert calls == 4


async def test_it_gives_up_after_settle_s_and_other_errors_are_not_retried() -> None:
    calls = 0

    async def silent() -> None:
        nonlocal calls
        calls += 1
        raise nats.errors.TimeoutError

    with pytest.raises(nats.errors.TimeoutError):
        await settled("bucket t", silent, settle_s=0.5)
    assert 2 <= calls <= 3  # at 0, 0.25 (then 0.5 more would pass the deadline)

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise nats.js.errors.BadRequestError

    calls = 0
    with pytest.raises(nats.js.errors.BadRequestError):
        await settled("bucket t", refused, settle_s=10.0)
    assert calls == 1

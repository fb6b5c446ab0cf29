"""StateStore's decoding of KV values, for the type of every service's bucket: a value of
the type, or None counted once as bad-state and logged; never an exception."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.evaluator.incidents import ServerState
from services.notifier.deliveries import Pending
from services.readmitter.waves import Readmission
from services.runtime.bus import DropCounters
from services.runtime.state import StateStore
from services.targeter.registry import ClientRecord
from services.targeter.steps import Tracked
from tests.fuzz.conftest import Fuzz
from tests.support.fuzzing import mutate, nested, perturb, random_bytes, to_json, value_of

KINDS: dict[str, Any] = {
    "collector": int,
    "evaluator": ServerState,
    "targeter": Tracked,
    "registry": ClientRecord,
    "notifier": Pending,
    "readmitter": Readmission,
}


@pytest.mark.parametrize("bucket", sorted(KINDS))
def test_a_stored_value_is_read_or_counted_bad(fuzz: Fuzz, bucket: str) -> None:
    kind = KINDS[bucket]
    rng = fuzz.rng
    counters = DropCounters()
    store: StateStore[Any] = StateStore(None, kind, counters, bucket)  # type: ignore[arg-type]
    seeds = [to_json(value_of(rng, kind)) for _ in range(8)]
    good = bad = 0
    for case in fuzz.cases():
        pick = rng.random()
        if pick < 0.3:
            data = to_json(value_of(rng, kind))
        elif pick < 0.55:
            data = to_json(perturb(rng, value_of(rng, kind)))
        elif pick < 0.85:
            data = mutate(rng, rng.choice(seeds), seeds)
        elif pick < 0.9:
            data = nested(rng, "json")
        else:
            data = random_bytes(rng, 128)
        before = counters.dropped["bad-state"]
        value = store._decode(f"key-{case}", data, case)
        if value is None:
            bad += 1
            assert counters.dropped["bad-state"] == before + 1
            # the same value read again is neither counted nor logged again
            assert store._decode(f"key-{case}", data, case) is None
            assert counters.dropped["bad-state"] == before + 1
        else:
            good += 1
            assert isinstance(value, kind)
            assert counters.dropped["bad-state"] == before
            msgspec.json.encode(value)
    assert good and bad

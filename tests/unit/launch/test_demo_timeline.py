"""The demo's timeline: a decision heard twice (sent again until the stream stored it) is
told, and counted in the summary, once."""

from __future__ import annotations

from schemas.events import ReadmitWave
from services.launch.demo import Timeline


async def test_a_wave_heard_twice_is_one_wave() -> None:
    timeline = Timeline()
    wave = ReadmitWave(incident_id="i", server="A", wave=1, clients=["nas-01"])
    again = ReadmitWave(id=wave.id, incident_id="i", server="A", wave=1, clients=["nas-01"])
    other = ReadmitWave(incident_id="i", server="A", wave=2, clients=[], final=True)
    for event in (wave, again, other):
        await timeline.on_event(event)
    assert [w.wave for w in timeline.waves] == [1, 2]

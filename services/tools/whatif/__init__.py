"""`aaa-failover what-if`: a recorded incident replayed through the decisions with other settings.

Pure and deterministic: no clock, no bus, no random ids. By concern:
:mod:`~services.tools.whatif.settings` makes the settings
(:func:`apply_settings`); :mod:`~services.tools.whatif.outcome` reads what
the live services decided from the recorded events (:func:`recorded`);
:mod:`~services.tools.whatif.simulation` decides again from the recorded
metrics samples through the deciding services' own pure cores
(:func:`simulate`: the evaluator's, with the clients part from the recorded
``ClientStatus`` reports, the targeter's and the readmitter's); and
:mod:`~services.tools.whatif.rendering` shows both (:func:`side_by_side`,
:func:`to_json`).

What the simulation assumes: health is as recorded (it cannot know how load
would have moved); every client told to move goes to its first alternate and
every readmitted client comes back; the readmitter decides at each sample
of the server and whenever a wave falls due, on the latest health; clients
returning on their own request (wave 0) are not simulated and not counted.
"""

from __future__ import annotations

from services.tools.whatif.outcome import Outcome, WaveOutcome, first_opened, recorded
from services.tools.whatif.rendering import HEALTH_NOTE, side_by_side, summary, to_json
from services.tools.whatif.settings import SECTIONS, apply_settings
from services.tools.whatif.simulation import SOURCE, simulate

__all__ = [
    "HEALTH_NOTE",
    "SECTIONS",
    "SOURCE",
    "Outcome",
    "WaveOutcome",
    "apply_settings",
    "first_opened",
    "recorded",
    "side_by_side",
    "simulate",
    "summary",
    "to_json",
]

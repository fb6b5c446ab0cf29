"""The checks of a recorded incident (tests/support/incident_checks.py) on hand-made events:
a clean incident passes every check, and each fault is caught by its check, by name."""

from __future__ import annotations

from schemas.events import (
    Ack,
    ClientStatus,
    Delivery,
    Event,
    FailoverNotice,
    FailoverPlan,
    Incident,
    Move,
    ReadmitNotice,
    ReadmitRequest,
    ReadmitWave,
)
from services.notifier.deliveries import notice_id
from tests.support.chaos import findings_of
from tests.support.incident_checks import check_incidents

INCIDENT = "inc1"


class Script:
    """A run written event by event, each a tenth of a second after the previous."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.now = 1000.0

    def _at(self) -> float:
        self.now += 0.1
        return self.now

    def incident(self, state: str, relapses: int = 0) -> Incident:
        event = Incident(
            incident_id=INCIDENT,
            server="A",
            state=state,  # type: ignore[arg-type]
            health=0.1,
            opened_at=1000.0,
            relapses=relapses,
            time=self._at(),
        )
        self.events.append(event)
        return event

    def plan(self, *clients: str, step: int = 1) -> FailoverPlan:
        event = FailoverPlan(
            incident_id=INCIDENT,
            server="A",
            moves=[Move(client=c, alternates=["B"]) for c in clients],
            step=step,
            time=self._at(),
        )
        self.events.append(event)
        return event

    def failover(self, client: str, *, ack: bool = True) -> FailoverNotice:
        notice = FailoverNotice(
            incident_id=INCIDENT,
            server="A",
            client=client,
            alternates=["B"],
            seq=1,
            valid_until=9999.0,
            time=self._at(),
        )
        self.events.append(notice)
        if ack:
            self.ack(notice, "B")
        return notice

    def ack(
        self, notice: FailoverNotice | ReadmitNotice, now_on: str, *, again: bool = False
    ) -> Ack:
        event = Ack(
            notice_id=notice.id,
            client=notice.client,
            server="A",
            accepted=True,
            now_on=now_on,
            again=again,
            time=self._at(),
        )
        self.events.append(event)
        return event

    def wave(self, number: int, *clients: str, final: bool = False) -> ReadmitWave:
        event = ReadmitWave(
            incident_id=INCIDENT,
            server="A",
            wave=number,
            clients=list(clients),
            final=final,
            time=self._at(),
        )
        self.events.append(event)
        return event

    def readmit(self, client: str, wave: int, *, ack: bool = True) -> ReadmitNotice:
        notice = ReadmitNotice(
            incident_id=INCIDENT,
            server="A",
            client=client,
            wave=wave,
            seq=2,
            valid_until=9999.0,
            time=self._at(),
        )
        self.events.append(notice)
        if ack:
            self.ack(notice, "A")
        return notice

    def status(self, client: str, current: str) -> ClientStatus:
        event = ClientStatus(client=client, home="A", current=current, time=self._at())
        self.events.append(event)
        return event

    def add(self, event: Event) -> None:
        self.events.append(event)


def clean_incident() -> Script:
    s = Script()
    s.status("n1", "A")
    s.status("n2", "A")
    s.incident("opened")
    s.plan("n1", "n2")
    s.failover("n1")
    s.failover("n2")
    s.status("n1", "B")
    s.status("n2", "B")
    s.incident("recovering")
    s.wave(1, "n1")
    s.readmit("n1", 1)
    s.status("n1", "A")
    s.wave(2, "n2", final=True)
    s.readmit("n2", 2)
    s.status("n2", "A")
    s.incident("closed")
    s.wave(2, final=True)  # the final wave again, with no clients: the same decision
    return s


def test_a_clean_incident_passes_every_check() -> None:
    assert check_incidents(clean_incident().events, "A") == {}


def test_no_incident_at_all_is_a_finding() -> None:
    s = Script()
    s.status("n1", "A")
    assert list(check_incidents(s.events, "A")) == ["opened"]


def test_a_client_planned_but_never_moved() -> None:
    s = Script()
    s.incident("opened")
    plan = s.plan("n1", "n2")
    s.failover("n1")
    notice = s.failover("n2", ack=False)
    s.incident("recovering")
    s.wave(1, "n1", final=True)
    s.readmit("n1", 1)
    s.incident("closed")
    findings = check_incidents(s.events, "A")
    assert list(findings) == ["moved"]
    (message,) = findings["moved"]
    assert "n2" in message and plan.plan_id in message and notice.id in message


def test_a_status_away_from_the_server_counts_as_moved() -> None:
    s = Script()
    s.incident("opened")
    s.plan("n1")
    notice = s.failover("n1", ack=False)
    s.status("n1", "B")
    s.incident("recovering")
    s.wave(1, "n1", final=True)
    s.readmit("n1", 1)
    s.status("n1", "A")
    s.incident("closed")
    assert check_incidents(s.events, "A") == {}
    assert notice.client == "n1"


def test_a_client_home_by_its_own_timer_fails() -> None:
    s = Script()
    s.incident("opened")
    s.plan("n1")
    s.failover("n1")
    s.status("n1", "B")
    request = ReadmitRequest(client="n1", server="A", time=s._at())
    s.add(request)
    s.status("n1", "A")  # home before any wave said so
    s.incident("recovering")
    s.wave(1, final=True)
    s.incident("closed")
    findings = check_incidents(s.events, "A")
    assert list(findings) == ["home by waves"]
    text = "\n".join(findings["home by waves"])
    assert request.id in text and "in no wave" in text and "on its own" in text


def test_a_client_in_a_wave_whose_notice_is_never_acked_fails() -> None:
    s = Script()
    s.incident("opened")
    s.plan("n1")
    s.failover("n1")
    s.incident("recovering")
    s.wave(1, "n1", final=True)
    notice = s.readmit("n1", 1, ack=False)
    s.incident("closed")
    findings = check_incidents(s.events, "A")
    assert "home by waves" in findings
    assert notice.id in findings["home by waves"][0]
    assert "ended on B" not in "\n".join(findings["home by waves"])


def test_a_client_that_ends_away_fails() -> None:
    s = clean_incident()
    last = s.status("n2", "C")
    findings = check_incidents(s.events, "A")
    assert list(findings) == ["home by waves"]
    assert last.id in findings["home by waves"][0]


def test_an_incident_that_never_closes_fails() -> None:
    s = clean_incident()
    events = [e for e in s.events if not (isinstance(e, Incident) and e.state == "closed")]
    findings = check_incidents(events, "A")
    assert list(findings) == ["closed"]
    assert "recovering" in findings["closed"][0]


def test_a_transition_published_twice_fails_but_a_relapse_does_not() -> None:
    s = clean_incident()
    s.incident("opened", relapses=1)  # a relapse: a transition of its own
    s.incident("recovering", relapses=1)
    s.incident("closed", relapses=1)
    assert check_incidents(s.events, "A") == {}
    again = s.incident("closed", relapses=1)
    findings = check_incidents(s.events, "A")
    assert list(findings) == ["transitions once"]
    assert again.id in findings["transitions once"][0]


def test_a_client_moved_again_while_its_move_stands_fails() -> None:
    s = Script()
    s.incident("opened")
    first = s.plan("n1")
    s.failover("n1")
    second = s.plan("n1", step=2)
    s.failover("n1")
    s.incident("recovering")
    s.wave(1, "n1", final=True)
    s.readmit("n1", 1)
    s.incident("closed")
    findings = check_incidents(s.events, "A")
    assert list(findings) == ["moved once"]
    message = findings["moved once"][0]
    assert first.plan_id in message and second.plan_id in message


def test_a_client_planned_again_after_its_move_failed_is_no_double() -> None:
    s = Script()
    s.incident("opened")
    s.plan("n1")
    s.failover("n1", ack=False)
    s.plan("n1", step=2)
    s.failover("n1")
    s.incident("recovering")
    s.wave(1, "n1", final=True)
    s.readmit("n1", 1)
    s.incident("closed")
    assert check_incidents(s.events, "A") == {}


def test_a_re_ack_of_an_old_move_is_no_move_standing_when_planned_again() -> None:
    s = Script()
    s.incident("opened")
    s.plan("n1")
    old = s.failover("n1")
    s.wave(1, "n1")
    s.readmit("n1", 1)  # home
    s.ack(old, "B", again=True)  # the old notice heard again: answered as before
    s.plan("n1", step=2)
    s.failover("n1")
    s.incident("recovering")
    s.wave(2, "n1", final=True)
    s.readmit("n1", 2)
    s.incident("closed")
    assert check_incidents(s.events, "A") == {}


def test_a_wave_number_with_two_lists_of_clients_fails() -> None:
    s = clean_incident()
    again = s.wave(1, "n2")
    findings = check_incidents(s.events, "A")
    assert "waves once" in findings
    text = "\n".join(findings["waves once"])
    assert again.id in text and "wave 1" in text


def test_a_client_in_two_waves_fails() -> None:
    s = Script()
    s.incident("opened")
    s.plan("n1")
    s.failover("n1")
    s.incident("recovering")
    s.wave(1, "n1")
    s.readmit("n1", 1)
    s.wave(2, "n1", final=True)
    s.readmit("n1", 2)
    s.incident("closed")
    findings = check_incidents(s.events, "A")
    assert "waves once" in findings
    assert "readmitted twice" in findings["waves once"][0]


def test_a_notice_accepted_twice_as_a_first_answer_fails() -> None:
    s = clean_incident()
    notice = next(e for e in s.events if isinstance(e, FailoverNotice))
    first = next(e for e in s.events if isinstance(e, Ack) and e.notice_id == notice.id)
    second = s.ack(notice, "C")  # again=False: the client acted on it a second time
    findings = check_incidents(s.events, "A")
    assert list(findings) == ["acked once"]
    [message] = findings["acked once"]
    assert notice.id in message and first.id in message and second.id in message
    assert notice.client in message


def test_a_double_is_caught_whatever_the_notifier_says_it_sent() -> None:
    s = clean_incident()
    notice = next(e for e in s.events if isinstance(e, FailoverNotice))
    s.add(
        Delivery(
            notice_id=notice.id,
            notice_type="notice.failover.v2",
            client=notice.client,
            server="A",
            outcome="retried",
            attempts=2,
            time=s._at(),
        )
    )
    s.ack(notice, "B")  # sent twice, but acted on twice: still a double
    assert list(check_incidents(s.events, "A")) == ["acked once"]


def test_re_acks_of_a_notice_heard_again_are_no_double() -> None:
    s = clean_incident()
    failover = next(e for e in s.events if isinstance(e, FailoverNotice))
    readmit = next(e for e in s.events if isinstance(e, ReadmitNotice))
    for _ in range(3):  # re-sends the stream may hold no Delivery of
        s.ack(failover, "B", again=True)
        s.ack(readmit, "A", again=True)
    assert check_incidents(s.events, "A") == {}


def test_a_notice_given_up_after_it_was_acked_fails() -> None:
    s = clean_incident()
    notice = next(e for e in s.events if isinstance(e, FailoverNotice))
    failed = Delivery(
        notice_id=notice.id,
        notice_type="notice.failover.v2",
        client=notice.client,
        server="A",
        outcome="failed",
        attempts=4,
        time=s._at(),
    )
    s.add(failed)
    findings = check_incidents(s.events, "A")
    assert list(findings) == ["acks heard"]
    assert failed.id in findings["acks heard"][0]


def test_a_planned_move_with_no_notice_is_lost() -> None:
    s = Script()
    s.incident("opened")
    plan = s.plan("n1")
    s.status("n1", "B")  # it left by itself: moved, but the plan was never noticed
    s.incident("recovering")
    s.wave(1, "n1", final=True)
    s.readmit("n1", 1)
    s.status("n1", "A")
    s.incident("closed")
    findings = check_incidents(s.events, "A")
    assert list(findings) == ["nothing lost"]
    assert plan.plan_id in findings["nothing lost"][0]


def test_a_wave_client_with_no_notice_is_lost() -> None:
    s = Script()
    s.incident("opened")
    s.plan("n1")
    s.failover("n1")
    s.incident("recovering")
    wave = s.wave(1, "n1", final=True)
    s.incident("closed")
    findings = check_incidents(s.events, "A")
    assert "nothing lost" in findings
    assert wave.id in findings["nothing lost"][0]
    assert "no granted ReadmitNotice" in findings["home by waves"][0]


def test_a_client_homed_elsewhere_moved_off_the_server_needs_no_wave_only_to_end_home() -> None:
    """On A by its own failover, homed on B: A's plan moves it off A and it goes home to B;
    no wave of A readmits it, and none is asked of it. Ending away from B still fails."""
    s = Script()
    s.incident("opened")
    s.add(ClientStatus(client="n9", home="B", current="A", time=s._at()))
    s.plan("n9")
    s.failover("n9")
    s.add(ClientStatus(client="n9", home="B", current="B", time=s._at()))
    s.incident("recovering")
    s.wave(1, final=True)
    s.incident("closed")
    assert "home by waves" not in check_incidents(s.events, "A")
    s.add(ClientStatus(client="n9", home="B", current="C", time=s._at()))
    assert "homed on B, ended on C" in check_incidents(s.events, "A")["home by waves"][0]


def test_what_the_stream_missed_counts_for_the_clients_but_a_decision_missed_is_lost() -> None:
    """A cluster electing the stream's leader stores neither the acks nor the notices sent
    meanwhile (heard live all the same); decisions are published until stored."""
    s = clean_incident()
    acks = [e for e in s.events if isinstance(e, Ack)]
    stored = [e for e in s.events if not isinstance(e, Ack)]
    assert check_incidents(stored, "A")  # without the acks, clients seem never to move
    assert findings_of(stored, acks) == {}
    wave = next(e for e in stored if isinstance(e, ReadmitWave))
    without_wave = [e for e in s.events if e is not wave]
    assert list(findings_of(without_wave, [wave])) == ["decisions stored"]


def test_a_wave_notice_neither_stored_nor_heard_is_shown_sent_by_the_ack_of_its_id() -> None:
    """The notifier names a wave's notice to a client after the wave and the client: a
    client's ack of that id shows the notice reached it (sent as the node leading the
    stream was killed: no copy of it anywhere but the ack)."""
    s = Script()
    s.status("n1", "A")
    s.incident("opened")
    s.plan("n1")
    s.failover("n1")
    s.status("n1", "B")
    s.incident("recovering")
    wave = s.wave(1, "n1")
    s.add(
        Ack(
            notice_id=notice_id(wave.id, "n1"),
            client="n1",
            server="A",
            accepted=True,
            now_on="A",
            time=s._at(),
        )
    )
    s.status("n1", "A")
    s.wave(2, final=True)
    s.incident("closed")
    assert check_incidents(s.events, "A") == {}
    unacked = [e for e in s.events if not (isinstance(e, Ack) and e.now_on == "A")]
    assert {"home by waves", "nothing lost"} <= set(check_incidents(unacked, "A"))

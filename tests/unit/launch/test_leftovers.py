"""How `aaa-failover up` recognises, from command lines, what a previous `up` of its config left."""

from __future__ import annotations

from pathlib import Path

from services.launch.supervisor import recognise

CONFIG = Path("/srv/farm/farm.toml")
STORE = Path("/srv/farm/.nats")
URL = "tls://127.0.0.1:4321"
PY = ["/venv/bin/python", "-m", "services.launch.cli"]


def seen(
    cmdline: list[str],
    cwd: str = "/",
    *,
    sandbox: str | None = None,
    bus_url: str | None = URL,
    data_dir: Path | None = STORE,
) -> tuple[str, bool] | None:
    return recognise(
        cmdline, cwd, config_path=CONFIG, data_dir=data_dir, sandbox=sandbox, bus_url=bus_url
    )


def test_a_service_as_up_starts_it_on_the_bus_of_the_bus_file() -> None:
    argv = [*PY, "run", "evaluator", "-c", str(CONFIG), "--bus-url", URL]
    assert seen(argv) == (f"runs evaluator of {CONFIG}", True)
    assert seen([*argv[:-1], "tls://127.0.0.1:9"]) == (f"runs evaluator of {CONFIG}", False)
    assert seen(argv, bus_url=None) == (f"runs evaluator of {CONFIG}", True)  # no bus file


def test_a_service_run_by_hand_is_the_configs_but_not_up_s() -> None:
    by_hand = ["/venv/bin/python", "/venv/bin/aaa-failover", "run", "aaa", "-c", "farm.toml"]
    assert seen(by_hand, cwd="/srv/farm") == (f"runs aaa of {CONFIG}", False)
    assert seen(by_hand, cwd="/elsewhere") is None  # another farm.toml


def test_other_configs_sandboxes_and_commands_are_not_the_configs() -> None:
    other = [*PY, "run", "evaluator", "-c", "/srv/other/farm.toml", "--bus-url", URL]
    assert seen(other) is None
    in_sandbox = [*PY, "run", "evaluator", "-c", str(CONFIG), "--bus-url", URL, "--sandbox", "s1"]
    assert seen(in_sandbox) is None
    assert seen(in_sandbox, sandbox="s1") == (f"runs evaluator of {CONFIG}", True)
    assert seen([*PY, "tail", "-c", str(CONFIG)]) is None
    assert seen(["vim", "run", "-c", str(CONFIG)]) is None
    assert seen([]) is None


def test_the_embedded_nats_server_of_the_config_by_its_store() -> None:
    server = ["/venv/bin/nats-server", "-a", "127.0.0.1", "-p", "4321", "-js", "-sd", str(STORE)]
    assert seen(server) == (f"nats-server on {STORE}", True)
    assert seen(server, data_dir=None) is None  # bus.url: the bus is not the config's
    assert seen([*server[:-1], "/srv/other/.nats"]) is None

"""The container files, checked offline: compose files against the Compose Specification,
the stack against the config it runs, the images' Dockerfiles, and the health check.

Every compose file of the repository is interpolated as compose does (with its
defaults, and with the variables set) and validated against the Compose
Specification's JSON Schema vendored in ``compose/schema/``, which is what
``docker compose config`` checks. The rest is what no schema knows: each
container holds exactly the secret files its process reads of
``compose/farm.toml`` (services/launch/reads.py), the shared bus key is the
reference servers' alone and each service's signing key its own, no two
services take one port on the shared host network, FreeRADIUS listens where
the farm looks for it, and the process each server entry matches is the one
its container runs. Running the stack
for real is ``tests/containers/`` (``make containers``).
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import re
import shlex
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from services.launch import bususers, reads
from services.runtime.config import Config, load_config
from tests.support import needs

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SCHEMA = COMPOSE_DIR / "schema" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
FARM = COMPOSE_DIR / "farm.toml"
CONFIG_IN_CONTAINER = "/etc/aaa-failover/farm.toml"
RADIUS_DIR = COMPOSE_DIR / "freeradius"
COMPOSE_NAMES = re.compile(r"^(docker-)?compose(\.[\w.-]+)?\.ya?ml$")
SKIP_DIRS = {".git", ".venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


def compose_files() -> list[Path]:
    """Every compose file of the repository."""
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        found += [Path(dirpath) / f for f in filenames if COMPOSE_NAMES.match(f)]
    return sorted(found)


# --- interpolation, as compose does it ----------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


class InterpolationError(ValueError):
    """A variable that compose would refuse."""


def interpolate_text(text: str, env: Mapping[str, str]) -> str:
    """``text`` with ``$VAR``, ``${VAR}``, ``${VAR:-default}`` and the like replaced."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("invalid") is not None:
            raise InterpolationError(f"invalid interpolation in {text!r}")
        name = match.group("braced") or match.group("named")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset = value is None
        empty = unset or value == ""
        missing = empty if op and op.startswith(":") else unset
        if op in ("-", ":-"):
            return arg if missing else str(value)
        if op in ("?", ":?"):
            if missing:
                raise InterpolationError(f"{name}: {arg or 'required'}")
            return str(value)
        if op in ("+", ":+"):
            return "" if missing else arg
        return "" if unset else str(value)

    return _VARIABLE.sub(replace, text)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Every string of a loaded compose file interpolated."""
    if isinstance(value, str):
        return interpolate_text(value, env)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def variables(value: Any) -> list[tuple[str, str | None]]:
    """(name, operator) of every variable reference in a loaded compose file."""
    if isinstance(value, str):
        return [
            (m.group("braced") or m.group("named"), m.group("op"))
            for m in _VARIABLE.finditer(value)
            if m.group("braced") or m.group("named")
        ]
    if isinstance(value, list):
        return [ref for v in value for ref in variables(v)]
    if isinstance(value, dict):
        return [ref for v in value.values() for ref in variables(v)]
    return []


def load_compose(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    yaml = needs.module("yaml", "test")
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a mapping"
    return interpolate(data, env or {})  # type: ignore[no-any-return]


def test_interpolation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    cases = {
        "$$SET": "$SET",
        "${SET}": "v",
        "$SET/x": "v/x",
        "${UNSET}": "",
        "${UNSET:-d}": "d",
        "${EMPTY:-d}": "d",
        "${EMPTY-d}": "",
        "${SET:-d}": "v",
        "${SET:+alt}": "alt",
        "${UNSET+alt}": "",
        "port=${P:-14222}": "port=14222",
    }
    for text, expected in cases.items():
        assert interpolate_text(text, env) == expected, text
    with pytest.raises(InterpolationError):
        interpolate_text("${UNSET:?needed}", env)
    with pytest.raises(InterpolationError):
        interpolate_text("${EMPTY:?needed}", env)
    with pytest.raises(InterpolationError):
        interpolate_text("a $ b", env)


# --- the Compose Specification -----------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Any:
    jsonschema = needs.module("jsonschema", "test")
    raw = SCHEMA.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256, "compose-spec.json changed"
    schema = json.loads(raw)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _errors(validator: Any, data: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    ]


def test_the_repository_has_its_compose_file() -> None:
    assert COMPOSE_FILE in compose_files()


@pytest.mark.parametrize(
    "path", compose_files(), ids=lambda p: str(p.relative_to(ROOT)) if isinstance(p, Path) else p
)
def test_compose_file_follows_the_compose_specification(validator: Any, path: Path) -> None:
    raw = load_compose(path, env=None)
    refs = variables(needs.module("yaml", "test").safe_load(path.read_text()))
    without_default = sorted({name for name, op in refs if op not in ("-", ":-")})
    assert not without_default, f"variables without a default: {without_default}"
    assert not _errors(validator, raw), "\n".join(_errors(validator, raw))
    # and with every variable set, as an operator would set them
    env = {name: "1" for name, _ in refs}
    env |= {"AAA_FAILOVER_IMAGE": "registry.example/aaa-failover:1.0", "AAA_NATS_PORT": "24222"}
    configured = load_compose(path, env)
    assert not _errors(validator, configured), "\n".join(_errors(validator, configured))


def test_the_schema_catches_a_broken_service(validator: Any) -> None:
    data = load_compose(COMPOSE_FILE)
    data["services"]["evaluator"]["restart"] = ["always"]
    data["services"]["targeter"]["depends_on"] = {"nats": {"condition": "service_ready"}}
    data["services"]["notifier"]["healthcheck"]["intervall"] = "5s"
    found = "\n".join(_errors(validator, data))
    for where in ("evaluator/restart", "targeter/depends_on", "notifier/healthcheck"):
        assert where in found, found


# --- the stack against the config it runs ------------------------------------------------


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return load_compose(COMPOSE_FILE)


@pytest.fixture(scope="module")
def farm() -> Config:
    return load_config(FARM)


def _app_services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run `aaa-failover run ...`."""
    return {
        name: svc
        for name, svc in stack["services"].items()
        if isinstance(svc.get("command"), list) and svc["command"][:1] == ["run"]
    }


def _option(command: list[str], flag: str) -> list[str]:
    """Every value of ``flag`` in an argv (``--flag V`` or ``--flag=V``)."""
    values = []
    for i, arg in enumerate(command):
        if arg == flag and i + 1 < len(command):
            values.append(command[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


def _mounted_secrets(stack: dict[str, Any], svc: dict[str, Any]) -> dict[str, str]:
    """Path in the container -> secret file (relative to compose/) of a service."""
    declared = stack["secrets"]
    mounted = {}
    for entry in svc.get("secrets", []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        path = target if target.startswith("/") else f"/run/secrets/{target}"
        mounted[path] = declared[source]["file"]
    return mounted


def test_every_service_is_on_the_host_network_with_a_health_check_and_a_restart_policy(
    stack: dict[str, Any],
) -> None:
    for name, svc in stack["services"].items():
        assert svc.get("network_mode") == "host", name
        assert svc.get("restart") in ("always", "unless-stopped", "on-failure"), name
        assert svc.get("healthcheck", {}).get("test"), name
        assert str(svc.get("image", "")).startswith("localhost/"), name
    for name, svc in _app_services(stack).items():
        assert svc["depends_on"]["nats"]["condition"] == "service_healthy", name
        assert svc.get("user") in (None, "aaa"), name


def test_every_service_reads_the_config_mounted_read_only(stack: dict[str, Any]) -> None:
    for name, svc in _app_services(stack).items():
        assert _option(svc["command"], "-c") == [CONFIG_IN_CONTAINER], name
        assert f"./farm.toml:{CONFIG_IN_CONTAINER}:ro" in svc["volumes"], name


def test_each_container_holds_exactly_the_secrets_its_process_reads(
    stack: dict[str, Any], farm: Config
) -> None:
    """What each container mounts is what its command reads of farm.toml, no more and no
    less: services/launch/reads.py runs the service's own start-up reads and its keyring
    on the config (tests/unit/launch/test_reads.py holds that to the services' code)."""
    config_dir = str(Path(CONFIG_IN_CONTAINER).parent)
    for name, svc in _app_services(stack).items():
        service, only = svc["command"][1], _option(svc["command"], "--only")
        mounted = _mounted_secrets(stack, svc)
        needed = {f"{config_dir}/{file}" for file in reads.files_read(farm, service, only)}
        assert set(mounted) == needed, (
            f"{name} lacks {sorted(needed - set(mounted))}, "
            f"holds unread {sorted(set(mounted) - needed)}"
        )
        for path, file in mounted.items():
            # the host file a container path shows is the one farm.toml means there
            assert path == f"{config_dir}/{file.removeprefix('./')}", (name, path, file)


def test_only_the_reference_servers_hold_the_shared_key_and_each_service_its_own(
    stack: dict[str, Any], farm: Config
) -> None:
    assert farm.bus.key is not None and farm.bus.key.secret.file is not None
    shared = farm.bus.key.secret.file
    own = {s: keys[0].secret.file for s, keys in farm.bus.service_keys.items()}
    assert sorted(own) == ["collector", "evaluator", "notifier", "readmitter", "targeter"]
    assert len(set(own.values())) == len(own)
    for name, svc in _app_services(stack).items():
        service = svc["command"][1]
        held = {file.removeprefix("./") for file in _mounted_secrets(stack, svc).values()}
        assert (shared in held) == (service == "aaa"), name
        if service in own:
            assert own[service] in held, name
        signing = {s for s, file in own.items() if file in held}
        if service in ("aaa", "agent"):
            assert not signing, f"{name} holds the keys of {sorted(signing)}"
    collector = {
        file.removeprefix("./")
        for file in _mounted_secrets(stack, stack["services"]["collector"]).values()
    }
    assert not any("client-" in file for file in collector), collector


def test_freeradius_holds_its_status_secret_and_its_client_secret_alone(
    stack: dict[str, Any], farm: Config
) -> None:
    radius = stack["services"]["freeradius"]
    assert sorted(_mounted_secrets(stack, radius)) == [
        "/run/secrets/radius-F",
        "/run/secrets/status-F",
    ]
    assert _mounted_secrets(stack, radius)["/run/secrets/status-F"] == "./" + str(
        farm.server("F").status_secret.file
    )


def _files(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): p.read_text() for p in directory.rglob("*") if p.is_file()
    }


def test_make_secrets_writes_every_declared_secret(tmp_path: Path, stack: dict[str, Any]) -> None:
    target = tmp_path / "secrets"
    script = COMPOSE_DIR / "make-secrets.sh"
    env = {**os.environ, "AAA_FAILOVER": str(ROOT / ".venv" / "bin" / "aaa-failover")}
    subprocess.run(
        ["sh", str(script), str(target)], check=True, capture_output=True, timeout=60, env=env
    )
    first = _files(target)
    declared = {str(Path(s["file"]).relative_to("secrets")) for s in stack["secrets"].values()}
    assert declared <= set(first)
    assert set(first) - declared == {"tls/client.pem", "tls/client-key.pem"}
    tokens = {name: text for name, text in first.items() if not name.startswith("tls/")}
    assert all(re.fullmatch(r"[0-9a-f]{32}\n", text) for text in tokens.values()), tokens
    assert len(set(tokens.values())) == len(tokens)
    assert first["tls/ca.pem"].startswith("-----BEGIN CERTIFICATE-----")
    for folder in (target, target / "keys", target / "nats", target / "tls"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    subprocess.run(
        ["sh", str(script), str(target)], check=True, capture_output=True, timeout=60, env=env
    )
    assert _files(target) == first


def test_the_bus_takes_tls_only_and_a_user_per_container(
    stack: dict[str, Any], farm: Config
) -> None:
    assert farm.bus.url is not None and farm.bus.url.startswith("tls://")
    nats = stack["services"]["nats"]
    assert nats["command"][:3] == ["bus-server", "-c", CONFIG_IN_CONTAINER]
    mounted = _mounted_secrets(stack, nats)
    assert farm.bus.auth is not None and farm.bus.tls is not None
    users = bususers.farm_users(farm)
    config_dir = str(Path(CONFIG_IN_CONTAINER).parent)
    wanted = {f"{config_dir}/{farm.bus.auth.dir}/{user}" for user in users}
    tls = farm.bus.tls
    wanted |= {f"{config_dir}/{f}" for f in (tls.ca, tls.server_cert, tls.server_key)}
    assert set(mounted) == wanted
    for name, svc in _app_services(stack).items():
        (url,) = _option(svc["command"], "--bus-url")
        assert url.startswith("tls://"), name
        passwords = [p for p in _mounted_secrets(stack, svc) if "/nats/" in p]
        assert len(passwords) == 1, f"{name} holds other users' passwords: {passwords}"


def test_demo_profile_runs_every_reference_server_and_client_once(
    stack: dict[str, Any], farm: Config
) -> None:
    apps = _app_services(stack)
    servers: list[str] = []
    clients: list[str] = []
    for name, svc in apps.items():
        service, only = svc["command"][1], _option(svc["command"], "--only")
        if service in ("aaa", "agent"):
            assert svc.get("profiles") == ["demo"], name
            assert only, f"{name} must name its servers or clients with --only"
            (servers if service == "aaa" else clients).extend(only)
    assert sorted(servers) == sorted(s.id for s in farm.servers if s.reference is not None)
    assert sorted(clients) == sorted(c.id for c in farm.clients)
    # every service of the farm itself runs, once, outside any profile
    core = [svc["command"][1] for svc in apps.values() if "profiles" not in svc]
    assert sorted(core) == ["collector", "evaluator", "notifier", "readmitter", "targeter"]


def test_no_two_services_share_a_port_on_the_host_network(
    stack: dict[str, Any], farm: Config
) -> None:
    taken: dict[int, str] = {}

    def take(port: int, owner: str) -> None:
        assert port not in taken, f"{owner} and {taken.get(port)} both use port {port}"
        taken[port] = owner

    nats = stack["services"]["nats"]["command"]
    take(int(_option(nats, "--port")[0]), "nats")
    take(int(_option(nats, "--http-port")[0]), "nats monitor")
    for name, svc in _app_services(stack).items():
        service = svc["command"][1]
        flag = _option(svc["command"], "--metrics-port")
        port = int(flag[0]) if flag else farm.metrics.port(service)
        assert port is not None, f"{name} serves no /metrics for its health check"
        if port == 0:
            continue
        take(port, name)
        assert _option(svc["command"], "--bus-url") == [
            f"tls://127.0.0.1:{_option(nats, '--port')[0]}"
        ], name
    scaled = [n for n, s in stack["services"].items() if s.get("scale") not in (None, 1, "1")]
    for name in scaled:
        assert _option(stack["services"][name]["command"], "--metrics-port") == ["0"], name


def _listeners(conf: str) -> dict[str, tuple[str, int]]:
    found = {}
    for block in re.findall(r"listen\s*\{([^}]*)\}", conf):
        fields = dict(re.findall(r"^\s*(\w+)\s*=\s*(\S+)", block, re.M))
        found[fields["type"]] = (fields["ipaddr"], int(fields["port"]))
    return found


def _cmd_of(dockerfile: Path) -> list[str]:
    lines = [line for line in dockerfile.read_text().splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1, dockerfile
    argv = json.loads(lines[0].removeprefix("CMD "))
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def test_freeradius_listens_where_the_farm_watches_it(stack: dict[str, Any], farm: Config) -> None:
    listeners = _listeners((RADIUS_DIR / "raddb" / "radiusd.conf").read_text())
    watched = [s for s in farm.servers if s.reference is None]
    assert [s.id for s in watched] == ["F"]
    server = watched[0]
    assert listeners["status"] == (server.ip, server.status_port)
    assert listeners["auth"] == (server.ip, server.auth_port)
    assert stack["services"]["freeradius"]["build"]["context"].endswith("freeradius")
    assert server.process is not None and server.process.cmdline is not None
    assert server.process.cmdline in " ".join(_cmd_of(RADIUS_DIR / "Dockerfile"))


def test_each_server_process_match_names_its_own_container(
    stack: dict[str, Any], farm: Config
) -> None:
    commands = {
        name: " ".join(svc["command"])
        for name, svc in _app_services(stack).items()
        if svc["command"][1] == "aaa"
    }
    for server in farm.servers:
        if server.reference is None:
            continue
        assert server.process is not None and server.process.cmdline is not None
        matching = [n for n, cmd in commands.items() if server.process.cmdline in cmd]
        assert matching == [f"aaa-{server.id.lower()}"], (server.id, matching)
    assert stack["services"]["collector"].get("pid") == "host"


# --- the Dockerfiles ---------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [ROOT / "Dockerfile", RADIUS_DIR / "Dockerfile"])
def test_dockerfile_builds_from_a_public_base_runs_unprivileged_and_checks_health(
    dockerfile: Path,
) -> None:
    text = dockerfile.read_text()
    assert "ARG BASE_IMAGE=python:3.12-slim" in text
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), users
    assert re.search(r"^HEALTHCHECK .*CMD", text, re.M | re.S)


def test_app_image_is_multi_stage_with_only_runtime_dependencies() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, re.M)
    assert stages == ["builder", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert "pip install" not in runtime and "uv sync" not in runtime
    # every install from the lock, without extras: uv pinned by hash, then uv sync --locked
    assert "pip install --no-deps --require-hashes -r /tmp/uv.txt" in text
    syncs = re.findall(r"uv sync ([^\n\\]*)", text)
    assert syncs and all("--locked" in sync and "--extra" not in sync for sync in syncs), syncs
    assert not re.search(r"pip install (?!--no-deps --require-hashes)", text)
    allowed = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for line in re.findall(r"^COPY (?!--from)(?:--\S+ )?(.+)$", text, re.M):
        for copied in line.split()[:-1]:
            assert f"!{copied.rstrip('/')}" in allowed, f"{copied} is not in the build context"


def test_freeradius_scripts_are_posix_shell() -> None:
    for script in ("entrypoint.sh", "healthcheck.sh"):
        path = RADIUS_DIR / script
        assert path.read_text().startswith("#!/bin/sh\n"), script
        assert os.access(path, os.X_OK), script
        subprocess.run(["sh", "-n", str(path)], check=True, timeout=10)
    subprocess.run(["sh", "-n", str(COMPOSE_DIR / "make-secrets.sh")], check=True, timeout=10)
    assert "radclient" in shlex.split((RADIUS_DIR / "healthcheck.sh").read_text(), comments=True)


# --- the image's health check ------------------------------------------------------------


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "aaa_failover_healthcheck", COMPOSE_DIR / "healthcheck.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/metrics" else 404)
        self.end_headers()
        self.wfile.write(b"# metrics\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_healthcheck_with_a_url(healthcheck: ModuleType, endpoint: int) -> None:
    assert healthcheck.main(["hc", f"http://127.0.0.1:{endpoint}/metrics"]) == 0
    assert healthcheck.main(["hc", f"http://127.0.0.1:{endpoint}/nothing"]) == 1


def test_healthcheck_fails_when_nothing_answers(healthcheck: ModuleType) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    server.server_close()
    assert healthcheck.main(["hc", f"http://127.0.0.1:{port}/metrics"]) == 1


def test_healthcheck_finds_the_metrics_port_of_its_own_processes(
    healthcheck: ModuleType, endpoint: int
) -> None:
    assert ("127.0.0.1", endpoint) in healthcheck.listening_ports()
    assert healthcheck.url_of("127.0.0.1", endpoint) == f"http://127.0.0.1:{endpoint}/metrics"
    assert healthcheck.url_of("::1", 9) == "http://[::1]:9/metrics"

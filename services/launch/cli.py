"""The `aaa-failover` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from services.launch import registry
from services.runtime import busfile
from services.runtime import loop as event_loop
from services.runtime.busauth import check_url
from services.runtime.config import Config, ConfigError, load_config
from services.runtime.lease import LeaseLost
from services.runtime.logs import configure_logging
from services.tools.errors import ToolError
from services.tools.recording import RecordingError, WindowSpec, load, parse_time

BUS_URL_HELP = (
    "NATS URL, overriding bus.url of the config; without either, the bus of an "
    "`aaa-failover up` running the config (its bus file, CONFIG.bus)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aaa-failover", description="Server-driven overload protection for AAA farms."
    )
    parser.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING, ERROR (default INFO; WARNING for demo)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one service")
    run.add_argument("service", choices=registry.NAMES)
    run.add_argument("-c", "--config", required=True, help="the TOML config file")
    run.add_argument("--bus-url", help=BUS_URL_HELP)
    run.add_argument(
        "--only", action="append", metavar="ID", help="aaa: this server; agent: this client"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus /metrics on port N (0: a free one), overriding [metrics] ports",
    )
    run.add_argument(
        "--bus-replicas",
        type=int,
        metavar="N",
        help="how many nodes of a NATS cluster hold the stream and every bucket, "
        "overriding bus.replicas",
    )
    _sandbox_option(run)

    up = sub.add_parser("up", help="run every service of a config under one supervisor")
    up.add_argument("-c", "--config", required=True)
    up.add_argument(
        "--bus-url",
        help="NATS URL, overriding bus.url of the config; without either, up starts an "
        "embedded nats-server (a sandbox joins the bus of the up running the config)",
    )
    _sandbox_option(up)

    demo = sub.add_parser("demo", help="an overload incident on an embedded farm, end to end")
    demo.add_argument("--clients", type=int, default=20)
    demo.add_argument("--overload-s", type=float, default=12.0)
    demo.add_argument("--keep", metavar="DIR", help="write the demo's files here and keep them")

    plan = sub.add_parser("plan", help="print the failover plan a situation would produce")
    plan.add_argument("-c", "--config", required=True)
    plan.add_argument(
        "--dry-run", action="store_true", help="plan without a bus and publish nothing (default)"
    )
    plan.add_argument("--server", required=True, help="the overloaded server")
    plan.add_argument("--health", type=float, required=True, help="its health, 0 to 1")
    plan.add_argument("--limiting", default="", help="what limits it, e.g. service:ldap")
    plan.add_argument(
        "--server-health",
        action="append",
        default=[],
        metavar="ID=HEALTH",
        help="another server's health (default 1.0)",
    )
    plan.add_argument("--json", action="store_true", help="the FailoverPlan event as JSON")

    tail = sub.add_parser("tail", help="print every event on the bus and whether it verified")
    tail.add_argument("filter", nargs="?", help="subject filter (default: <prefix>.>)")
    tail.add_argument("-c", "--config", required=True)
    tail.add_argument("--bus-url", help=BUS_URL_HELP)
    tail.add_argument("--server", help="only events whose server is this")
    tail.add_argument("--client", help="only events whose client is this")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    _sandbox_option(tail)

    replay = sub.add_parser(
        "replay", help="print a recorded window as a timeline, or replay it into a sandbox"
    )
    _recording_options(replay, incident_required=False)
    replay.add_argument("--from", dest="start", metavar="TIME", help="window start")
    replay.add_argument("--to", dest="end", metavar="TIME", help="window end (default: now)")
    replay.add_argument(
        "--sandbox",
        metavar="PREFIX",
        help="publish the window's input events under PREFIX instead of printing it",
    )
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", default="1x", help="replay this many times faster (default 1x)")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="replay with no pauses")
    replay.add_argument(
        "--kind",
        action="append",
        metavar="KIND",
        help="subject kind to replay (repeatable; 'all'; default: metrics, status, ack, request)",
    )
    replay.add_argument("--server", help="timeline: only events whose server is this")
    replay.add_argument("--client", help="timeline: only events whose client is this")
    replay.add_argument("--json", action="store_true", help="timeline: one JSON object per line")

    whatif = sub.add_parser(
        "what-if", help="re-decide a recorded incident offline with other settings"
    )
    _recording_options(whatif, incident_required=True)
    whatif.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="a setting to change, e.g. evaluator.failover_threshold=0.1 (repeatable)",
    )
    whatif.add_argument("--json", action="store_true", help="both outcomes as JSON")

    report = sub.add_parser("report", help="draw a recorded incident: PNG or HTML")
    _recording_options(report, incident_required=True)
    report.add_argument("-o", "--out", required=True, type=Path, help="incident.png or .html")

    devca = sub.add_parser(
        "dev-ca", help="make a development CA, and a server and a client certificate, for TLS"
    )
    devca.add_argument("dir", type=Path, help="folder to write them to (must not hold them)")
    devca.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="HOST",
        help="another DNS name or IP address of the server (127.0.0.1 and localhost always)",
    )
    devca.add_argument("--days", type=int, default=365, help="validity (default 365)")

    server = sub.add_parser(
        "bus-server",
        help="run nats-server in the foreground with the users, permissions and TLS of a config",
    )
    server.add_argument("-c", "--config", required=True)
    server.add_argument("--store", required=True, type=Path, help="JetStream folder")
    server.add_argument("--listen", default="127.0.0.1", help="address (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=4222)
    server.add_argument("--http-port", type=int, help="monitoring port (default: none)")
    server.add_argument("--name", help="this node's name in a cluster (needed with --cluster-port)")
    server.add_argument(
        "--cluster-port", type=int, help="where this node takes the other nodes' routes"
    )
    server.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="URL",
        help="another node of the cluster, nats-route://HOST:PORT (once per node)",
    )
    server.add_argument("--cluster-name", default="aaa", help="the cluster's name (default aaa)")
    server.add_argument(
        "--conf",
        type=Path,
        help="where to write the server's config, which holds the passwords "
        "(default: nats-server.conf in a private temporary folder)",
    )

    schema = sub.add_parser("schema", help="write the JSON Schema of every event")
    schema.add_argument("--out", type=Path, help="directory (default: schemas/json)")
    schema.add_argument(
        "--check",
        action="store_true",
        help="write nothing; name the files that no longer describe the events, exit 1 if any",
    )
    return parser


def _sandbox_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sandbox",
        metavar="PREFIX",
        help="run as a replay sandbox under PREFIX: recorded events of any age are accepted",
    )


def _recording_options(parser: argparse.ArgumentParser, *, incident_required: bool) -> None:
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--bus-url", help=BUS_URL_HELP)
    parser.add_argument(
        "--incident", required=incident_required, metavar="ID", help="the incident's window"
    )
    parser.add_argument(
        "--before",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds of the window before the incident opened (default 30)",
    )
    parser.add_argument(
        "--after",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds of the window after it closed (default 30)",
    )


def _config(args: argparse.Namespace) -> Config:
    """The config of ``args``: a sandbox if ``--sandbox`` asks for one. For `up`, on
    ``--bus-url`` if it is given (`up` passes it on to its services); a sandbox `up`
    with neither joins the bus of the `up` running the same config, if one does."""
    config = load_config(args.config)
    sandbox = getattr(args, "sandbox", None)
    if sandbox:
        config = config.as_sandbox(sandbox)
    if args.command == "up":
        url = args.bus_url or (_bus_url(args, config) if sandbox else None)
        if url:
            config = config.on_bus(url)
    return config


def _bus_url(args: argparse.Namespace, config: Config) -> str | None:
    """The bus a command joins: ``--bus-url``, else ``bus.url`` of the config, else the
    bus of an `aaa-failover up` running this config (its bus file), else None: the
    default (a recording tool then reads the stored stream of an embedded farm)."""
    if args.bus_url:
        check_url(args.bus_url)
    return busfile.choose(args.config, given=args.bus_url, configured=config.bus.url)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level or ("WARNING" if args.command == "demo" else "INFO"))
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "up":
            from services.launch.supervisor import up

            return up(_config(args), Path(args.config))
        if args.command == "demo":
            from services.launch.demo import demo

            return demo(clients=args.clients, overload_s=args.overload_s, keep=args.keep)
        if args.command == "plan":
            return _plan(args)
        if args.command == "tail":
            return _tail(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "what-if":
            return _what_if(args)
        if args.command == "report":
            return _report(args)
        if args.command == "schema":
            return _schema(args)
        if args.command == "dev-ca":
            return _dev_ca(args)
        if args.command == "bus-server":
            return _bus_server(args)
    except ConfigError as exc:
        print(f"aaa-failover: config error: {exc}", file=sys.stderr)
        return 2
    except ToolError as exc:
        print(f"aaa-failover {args.command}: {exc}", file=sys.stderr)
        return 2
    except LeaseLost as exc:
        # EX_TEMPFAIL: started again, it waits as a standby until it holds the lease
        print(f"aaa-failover {args.command}: {exc}", file=sys.stderr)
        return 75
    except KeyboardInterrupt:
        return 130
    return 2


def _schema(args: argparse.Namespace) -> int:
    from schemas.jsonschema import JSON_DIR, stale_schemas, write_schemas

    directory = args.out or JSON_DIR
    if args.check:
        stale = stale_schemas(directory)
        for name in stale:
            print(f"stale: {directory / name}")
        if stale:
            print("aaa-failover schema: run `aaa-failover schema` to write them", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schemas(directory):
        print(path)
    return 0


def _dev_ca(args: argparse.Namespace) -> int:
    from services.launch.devca import make_dev_ca

    try:
        paths = make_dev_ca(args.dir, names=args.name, days=args.days)
    except FileExistsError as exc:
        print(f"aaa-failover dev-ca: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _bus_server(args: argparse.Namespace) -> int:
    """nats-server in place of this process (exec), with the config's users (passwords
    read from bus.auth.dir, never made here), their permissions and TLS."""
    import os
    import tempfile

    from services.launch import bususers
    from services.runtime.natscluster import cluster_settings
    from services.runtime.natsserver import (
        NatsServerError,
        find_binary,
        server_config,
        write_server_config,
    )

    config = load_config(args.config)
    if config.bus.auth is None:
        raise ConfigError("bus.auth: bus-server needs the users' password files (bus.auth.dir)")
    users = bususers.server_users(
        bususers.farm_users(config), config.path(config.bus.auth.dir), create=False
    )
    settings = server_config(users, bususers.server_tls(config))
    if args.cluster_port is not None:
        if not args.name:
            raise ConfigError("bus-server: a node of a cluster needs --name")
        try:
            settings |= cluster_settings(
                args.name, args.cluster_name, f"{args.listen}:{args.cluster_port}", args.route
            )
        except NatsServerError as exc:
            raise ConfigError(f"bus-server: {exc}") from None
    elif args.route or args.name:
        raise ConfigError("bus-server: --name and --route need --cluster-port")
    conf = args.conf or Path(tempfile.mkdtemp(prefix="aaa-nats-")) / "nats-server.conf"
    write_server_config(conf, settings)
    argv = [
        find_binary(),
        "-c", str(conf),
        "-js",
        "-sd", str(args.store),
        "-a", args.listen,
        "-p", str(args.port),
    ]  # fmt: skip
    if args.http_port is not None:
        argv += ["-m", str(args.http_port)]
    sys.stderr.flush()
    os.execv(argv[0], argv)
    return 0  # not reached


def _run(args: argparse.Namespace) -> int:
    service = registry.service(args.service)
    if args.sandbox and not service.sandbox:
        raise ConfigError(
            f"only {', '.join(registry.SANDBOX)} run in a sandbox, not {args.service}"
        )
    config = _config(args)
    if service.name == "agent":
        config = _as_agent_user(config, args.only)
    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            raise ConfigError("--metrics-port must be in [0, 65535]")
        config = config.with_metrics_port(args.service, args.metrics_port)
    if args.bus_replicas is not None:
        if not 1 <= args.bus_replicas <= 5:
            raise ConfigError("--bus-replicas must be from 1 to 5 (JetStream's limit)")
        bus = msgspec.structs.replace(config.bus, replicas=args.bus_replicas)
        config = msgspec.structs.replace(config, bus=bus)
    event_loop.run(service.entry()(config, bus_url=_bus_url(args, config), only=args.only))
    return 0


def _as_agent_user(config: Config, only: list[str] | None) -> Config:
    """``config`` joining as the agent user that serves ``only`` (``bus.auth.agents``)."""
    auth = config.bus.auth
    if auth is None or not auth.agents or auth.user:
        return config
    from services.launch.bususers import agent_user

    user = agent_user(config, only)
    return msgspec.structs.replace(
        config,
        bus=msgspec.structs.replace(config.bus, auth=msgspec.structs.replace(auth, user=user)),
    )


def _plan(args: argparse.Namespace) -> int:
    from schemas.codec import encode
    from services.targeter.dryrun import describe, dry_run

    healths: dict[str, float] = {}
    for item in args.server_health:
        sid, _, value = item.partition("=")
        try:
            healths[sid] = float(value)
        except ValueError:
            raise ConfigError(f"--server-health {item!r}: expected ID=HEALTH") from None
    plan = dry_run(
        load_config(args.config),
        args.server,
        args.health,
        limiting=args.limiting,
        server_health=healths,
    )
    print(encode(plan).decode() if args.json else describe(plan))
    return 0


def _tail(args: argparse.Namespace) -> int:
    from services.tools.tail import tail

    config = _config(args)
    asyncio.run(
        tail(
            config,
            subject=args.filter,
            server=args.server,
            client=args.client,
            as_json=args.json,
            out=sys.stdout,
            bus_url=_bus_url(args, config),
        )
    )
    return 0


def _window(args: argparse.Namespace) -> WindowSpec:
    start = getattr(args, "start", None)
    end = getattr(args, "end", None)
    return WindowSpec(
        incident=args.incident,
        start=parse_time(start) if start else None,
        end=parse_time(end) if end else None,
        before_s=args.before,
        after_s=args.after,
    )


def _replay(args: argparse.Namespace) -> int:
    from services.tools.replay import parse_speed, replay

    window = _window(args)
    config = load_config(args.config)
    return asyncio.run(
        replay(
            config,
            window,
            out=sys.stdout,
            sandbox=args.sandbox,
            kinds=args.kind,
            speed=None if args.as_fast_as_possible else parse_speed(args.speed),
            server=args.server,
            client=args.client,
            as_json=args.json,
            bus_url=_bus_url(args, config),
        )
    )


def _what_if(args: argparse.Namespace) -> int:
    from services.tools import whatif

    config = load_config(args.config)
    changed = whatif.apply_settings(config, args.settings)
    loaded = asyncio.run(load(config, _window(args), bus_url=_bus_url(args, config)))
    assert loaded.span is not None
    try:
        before = whatif.recorded(loaded.events, loaded.span.incident_id)
    except ValueError as exc:
        raise RecordingError(str(exc)) from None
    after = whatif.simulate(
        changed, loaded.events, loaded.span.server, placement_before=loaded.span.opened_at
    )
    if args.json:
        print(json.dumps(whatif.to_json(before, after, args.settings), indent=2))
    else:
        print(whatif.side_by_side(before, after, settings=args.settings, start=loaded.start))
    return 0


def _report(args: argparse.Namespace) -> int:
    from services.tools.incident_timeline import timeline
    from services.tools.report import write_report

    config = load_config(args.config)
    loaded = asyncio.run(load(config, _window(args), bus_url=_bus_url(args, config)))
    assert loaded.span is not None
    path = write_report(timeline(loaded.events, loaded.span.incident_id, config), args.out)
    print(path)
    return 0


def module_main(service: str) -> None:
    """Entry of `python -m services.<service>`: the same as `aaa-failover run <service>`."""
    sys.exit(main(["run", service, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())

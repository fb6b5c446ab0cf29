"""The `aaa-failover` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from services.runtime.config import ConfigError, load_config
from services.runtime.logs import configure_logging

logger = logging.getLogger(__name__)

SERVICES = ("aaa", "collector", "evaluator", "targeter", "notifier", "readmitter", "agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aaa-failover", description="Server-driven overload protection for AAA farms."
    )
    parser.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING, ERROR (default INFO; WARNING for demo)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one service")
    run.add_argument("service", choices=SERVICES)
    run.add_argument("-c", "--config", required=True, help="the TOML config file")
    run.add_argument("--bus-url", help="NATS URL, overriding bus.url of the config")
    run.add_argument(
        "--only", action="append", metavar="ID", help="aaa: this server; agent: this client"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus /metrics on port N (0: a free one), overriding [metrics] ports",
    )

    up = sub.add_parser("up", help="run every service of a config under one supervisor")
    up.add_argument("-c", "--config", required=True)

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
    tail.add_argument("--bus-url", help="NATS URL, overriding bus.url of the config")
    tail.add_argument("--server", help="only events whose server is this")
    tail.add_argument("--client", help="only events whose client is this")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")

    schema = sub.add_parser("schema", help="write the JSON Schema of every event")
    schema.add_argument("--out", type=Path, help="directory (default: schemas/json)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level or ("WARNING" if args.command == "demo" else "INFO"))
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "up":
            from services.supervisor import up

            return up(load_config(args.config), Path(args.config))
        if args.command == "demo":
            from services.demo import demo

            return demo(clients=args.clients, overload_s=args.overload_s, keep=args.keep)
        if args.command == "plan":
            return _plan(args)
        if args.command == "tail":
            return _tail(args)
        if args.command == "schema":
            from schemas.jsonschema import JSON_DIR, write_schemas

            for path in write_schemas(args.out or JSON_DIR):
                print(path)
            return 0
    except ConfigError as exc:
        print(f"aaa-failover: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            raise ConfigError("--metrics-port must be in [0, 65535]")
        config = config.with_metrics_port(args.service, args.metrics_port)
    module = importlib.import_module(f"services.{args.service}.service")
    asyncio.run(module.run(config, bus_url=args.bus_url, only=args.only))
    return 0


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

    config = load_config(args.config)
    asyncio.run(
        tail(
            config,
            subject=args.filter,
            server=args.server,
            client=args.client,
            as_json=args.json,
            out=sys.stdout,
            bus_url=args.bus_url,
        )
    )
    return 0


def module_main(service: str) -> None:
    """Entry of `python -m services.<service>`: the same as `aaa-failover run <service>`."""
    sys.exit(main(["run", service, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())

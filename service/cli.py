"""`python -m service serve | migrate | check-config | openapi`, and the features' commands.

The root of the command line, as `service/main.py` is the root of the app: it registers the
features' subcommands (`users`, `tenants`, `seed-demo`) and hands each what it needs. Heavy
imports stay inside the handlers, so that `check-config` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from service import demo
from service.core.commands import EXIT_INVALID, command_settings, fail, first_line
from service.core.config import (
    ConfigError,
    Environment,
    HttpSettings,
    Settings,
    describe_validation_error,
    effective_settings,
    load_settings,
    safe_url,
)
from service.core.tenancy import TenantDirectory
from service.identity import cli as identity_cli
from service.tenants import cli as tenants_cli

APP_FACTORY = "service.main:create_app"
EXIT_CONFIG = EXIT_INVALID
MIGRATE_CHECK_INTERVAL_SECONDS = 2.0


def read_tenant_registry(settings: Settings) -> TenantDirectory:
    """The tenant registry as it is now (what `users create-admin --tenant` checks)."""
    from service.tenants.registry import TenantRegistry

    return TenantRegistry.read(settings.tenants.registry_dir)


def _prepare_multiprocess_metrics() -> None:
    # Imported here: it pulls in the web stack, which check-config and migrate do not need.
    from service.core.metrics import MULTIPROC_DIR_ENV

    # Set before workers start so every worker writes to the same, fresh directory.
    directory = Path(os.environ.get(MULTIPROC_DIR_ENV) or tempfile.mkdtemp(prefix="berth-prom-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_DIR_ENV] = str(directory)


def _serve_multiprocess_metrics(settings: Settings) -> Callable[[], None]:
    """With several workers the metrics port is served here, in the parent, from the files
    every worker writes (one listener for the pod, as with one worker)."""
    port = settings.observability.metrics_port
    if port is None or not settings.observability.metrics_enabled:
        return lambda: None
    from service.core.metrics import multiprocess_registry, serve_metrics

    return serve_metrics(multiprocess_registry(), settings.http.host, port)


def uvicorn_options(
    settings: Settings, *, host: str | None = None, port: int | None = None
) -> dict[str, Any]:
    """The uvicorn options `serve` runs with (host and port overridable from the command line)."""
    from service.core.protocol import BerthHttpProtocol

    http = settings.http
    return {
        "host": host or http.host,
        "port": port or http.port,
        # uvloop, accepting every waiting connection per turn (service/core/eventloop.py).
        "loop": "service.core.eventloop:BerthLoop",
        # httptools, with the error envelope and header limits (service/core/protocol.py).
        "http": BerthHttpProtocol,
        "access_log": False,  # we write our own access log line
        "log_config": None,  # keep our JSON logging
        "server_header": False,
        # Trusted proxies are berth's own to resolve, from one setting (core/proxies.py).
        "proxy_headers": False,
        "timeout_graceful_shutdown": http.graceful_shutdown_seconds,
        "timeout_keep_alive": http.keepalive_seconds,
    }


def _exit_after_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside uvicorn's own handling: re-raised by uvicorn after its graceful
    shutdown, or received before it started serving. Nothing is in flight either way."""
    raise SystemExit(0)


def run_uvicorn(app: Any, options: Mapping[str, Any], **extra: Any) -> None:
    """`uvicorn.run`, so that a SIGTERM-initiated graceful shutdown exits 0.

    uvicorn handles SIGTERM itself (drain, lifespan shutdown) and then re-raises the signal
    with the previous disposition restored; under the default disposition the process would
    die by the signal (exit 143) after a clean shutdown. This handler makes that a clean exit.
    """
    import uvicorn

    previous = signal.signal(signal.SIGTERM, _exit_after_sigterm)
    try:
        uvicorn.run(app, **options, **extra)
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    options = uvicorn_options(settings, host=args.host, port=args.port)
    workers = args.workers or settings.http.workers
    if workers > 1:
        _prepare_multiprocess_metrics()
        stop_metrics = _serve_multiprocess_metrics(settings)
        try:
            run_uvicorn(APP_FACTORY, options, factory=True, workers=workers)
        finally:
            stop_metrics()
        return 0
    from service.main import create_app

    run_uvicorn(create_app(settings), options)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    if args.check:
        return cmd_migrate_check(args)
    if args.tenant or args.all_tenants:  # tenant databases have their own history
        return tenants_cli.cmd_migrate_tenants(args)
    from service.core.logging import get_logger
    from service.db import migrate

    settings = command_settings()
    log = get_logger("berth.migrate")
    url = settings.database.url.get_secret_value()
    if args.downgrade:
        asyncio.run(migrate.downgrade(url, args.downgrade))
    else:
        asyncio.run(migrate.upgrade(url, args.revision))
    revision = asyncio.run(migrate.current_revision(url))
    log.info("migrations_applied", database=safe_url(url), revision=revision)
    return 0


def cmd_migrate_check(args: argparse.Namespace) -> int:
    """Exit 0 when the control-plane schema is at this image's head, else EXIT_FAILED
    with the revision found; changes nothing. `--wait` keeps looking (a pod's init
    container waits so for the migration Job: a pod never serves on an old schema)."""
    if args.downgrade or args.tenant or args.all_tenants or args.revision != "head":
        return fail("--check takes no other migrate option", EXIT_INVALID)
    from service.db import migrate

    settings = command_settings()
    url = settings.database.url.get_secret_value()
    head = migrate.CONTROL_PLANE.head()
    deadline = time.monotonic() + args.wait
    while True:
        found = asyncio.run(_revision_or_error(url))
        if found == head:
            print(f"berth: schema at head {head}")
            return 0
        if time.monotonic() >= deadline:
            return fail(f"schema at {found or 'no revision'}, this image needs {head}")
        time.sleep(min(MIGRATE_CHECK_INTERVAL_SECONDS, max(deadline - time.monotonic(), 0)))


async def _revision_or_error(url: str) -> str | None:
    """The database's revision; an unreachable database reads as its error, one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.db import migrate

    try:
        return await migrate.current_revision(url)
    except (OSError, SQLAlchemyError) as exc:
        return f"unknown ({first_line(exc)})"


def cmd_check_config(args: argparse.Namespace) -> int:
    """Exit 0 when the settings are valid and safe. `--show` prints them as one JSON
    document on stdout (nothing else there, so it pipes into jq), the verdict on stderr."""
    settings = load_settings()
    if args.show:
        print(json.dumps(effective_settings(settings), indent=2))
    verdict = f"configuration ok (environment={settings.environment.value})"
    print(verdict, file=sys.stderr if args.show else sys.stdout)
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from service.main import create_app

    # The document describes the API, not a deployment: build it under local rules (docs on,
    # no production checks) so it can also be generated inside a production-configured image.
    settings = Settings(environment=Environment.LOCAL, http=HttpSettings(docs_enabled=True))
    schema = create_app(settings).openapi()
    text = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve HTTP with uvicorn (uvloop + httptools)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="default 1: the pod is the unit of scale")
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser("migrate", help="upgrade the database (advisory-locked)")
    migrate.add_argument("--revision", default="head")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION")
    tenants = migrate.add_mutually_exclusive_group()
    tenants.add_argument("--tenant", metavar="SLUG", help="migrate this tenant's database")
    tenants.add_argument("--all-tenants", action="store_true", help="every registered tenant")
    migrate.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 0 if the database is at this image's head, 1 otherwise",
    )
    migrate.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --check: look again every 2 s for this long before giving up",
    )
    migrate.set_defaults(handler=cmd_migrate)

    check = commands.add_parser("check-config", help="validate settings; exit 2 if unsafe")
    check.add_argument(
        "--show", action="store_true", help="print the effective settings as JSON, secrets masked"
    )
    check.set_defaults(handler=cmd_check_config)

    openapi = commands.add_parser("openapi", help="print the OpenAPI document")
    openapi.add_argument("--output", "-o")
    openapi.set_defaults(handler=cmd_openapi)

    identity_cli.register(commands, tenants_of=read_tenant_registry)
    tenants_cli.register(commands)
    demo.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        return fail(str(exc), EXIT_CONFIG)
    except ValidationError as exc:  # settings built outside `load_settings` (openapi)
        return fail(describe_validation_error(exc), EXIT_CONFIG)

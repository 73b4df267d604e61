"""`python -m service serve | migrate | check-config | openapi`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from service.core.config import ConfigError, HttpSettings, Settings, ensure_safe, env_name
from service.core.metrics import MULTIPROC_DIR_ENV

APP_FACTORY = "service.main:create_app"
EXIT_CONFIG = 2


def _fail(message: str) -> int:
    print(f"berth: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        path = [str(p) for p in error["loc"]]
        parts.append(f"{env_name(*path)}: {error['msg']}")
    return "; ".join(parts)


def load_settings() -> Settings:
    """Settings from the environment and `.env`, as a one-line ConfigError when invalid."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc)) from None
    ensure_safe(settings)
    return settings


def _prepare_multiprocess_metrics() -> None:
    # Set before workers start so every worker writes to the same, fresh directory.
    directory = Path(os.environ.get(MULTIPROC_DIR_ENV) or tempfile.mkdtemp(prefix="berth-prom-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_DIR_ENV] = str(directory)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = load_settings()
    http = settings.http
    workers = args.workers or http.workers
    options = {
        "host": args.host or http.host,
        "port": args.port or http.port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,  # we write our own access log line
        "log_config": None,  # keep our JSON logging
        "server_header": False,
        "proxy_headers": True,
        "forwarded_allow_ips": ",".join(http.forwarded_allow_ips),
        "timeout_graceful_shutdown": http.graceful_shutdown_seconds,
        "timeout_keep_alive": http.keepalive_seconds,
    }
    if workers > 1:
        _prepare_multiprocess_metrics()
        uvicorn.run(APP_FACTORY, factory=True, workers=workers, **options)  # type: ignore[arg-type]
        return 0
    from service.main import create_app

    uvicorn.run(create_app(settings), **options)  # type: ignore[arg-type]
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.core.logging import configure_logging, get_logger
    from service.db import migrate
    from service.db.engine import safe_url

    settings = load_settings()
    configure_logging(settings.observability)
    log = get_logger("berth.migrate")
    url = settings.database.url.get_secret_value()
    if args.downgrade:
        asyncio.run(migrate.downgrade(url, args.downgrade))
    else:
        asyncio.run(migrate.upgrade(url, args.revision))
    revision = asyncio.run(migrate.current_revision(url))
    log.info("migrations_applied", database=safe_url(url), revision=revision)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.show:
        print(settings.model_dump_json(indent=2))
    print(f"configuration ok (environment={settings.environment.value})")
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from service.main import create_app

    schema = create_app(Settings(http=HttpSettings(docs_enabled=True))).openapi()
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
    migrate.set_defaults(handler=cmd_migrate)

    check = commands.add_parser("check-config", help="validate settings; exit 2 if unsafe")
    check.add_argument("--show", action="store_true", help="print settings, secrets masked")
    check.set_defaults(handler=cmd_check_config)

    openapi = commands.add_parser("openapi", help="print the OpenAPI document")
    openapi.add_argument("--output", "-o")
    openapi.set_defaults(handler=cmd_openapi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        return _fail(str(exc))

"""Logging: one JSON object per line on stdout (or a console format), secrets redacted.

structlog renders our own events directly (fast path); stdlib loggers (uvicorn, SQLAlchemy,
alembic) go through the same processors via `ProcessorFormatter`, so every line has one shape.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from service.core.config import LogSettings

# Field names: defined once, used by the middleware and the tests; the log shippers'
# pipelines (observability/alloy, observability/promtail) are checked against them.
# On every line: when, how severe, what happened, who said it. `level`, `event` and, for
# stdlib loggers, `logger` are the keys structlog itself writes (add_log_level, the
# positional message, stdlib.add_logger_name): named here, not chosen.
TIMESTAMP = "timestamp"
LEVEL = "level"
EVENT = "event"
LOGGER = "logger"
# Correlation: the request (every line written while it runs), its trace (when tracing is
# on), its tenant (once the request's tenant is known).
REQUEST_ID = "request_id"
TRACE_ID = "trace_id"
SPAN_ID = "span_id"
TENANT = "tenant"
# The submission a line is about (the worker's lines and the submissions routes').
SUBMISSION_ID = "submission_id"
# The access log line's own fields (service/core/middleware.py, AccessLogMiddleware).
METHOD = "method"
ROUTE = "route"
PATH = "path"
STATUS = "status"
DURATION_MS = "duration_ms"
RESPONSE_BYTES = "response_bytes"
CLIENT = "client"

LINE_FIELDS = (TIMESTAMP, LEVEL, EVENT, LOGGER)
ACCESS_LOG_FIELDS = (METHOD, ROUTE, PATH, STATUS, DURATION_MS, RESPONSE_BYTES, CLIENT)
# What a log store may index, by how many values a field takes. A Loki label makes a stream
# per distinct value: only a field with a handful of values may be one (`level`). The ids and
# the tenant are what a query looks lines up by, too many values for labels: Loki's
# structured metadata, indexed per line without making streams. The rest (route, status,
# path, client, ...) stays in the line, where a query's `| json` reads it.
LOW_CARDINALITY_FIELDS = (LEVEL,)
STRUCTURED_METADATA_FIELDS = (REQUEST_ID, TRACE_ID, SPAN_ID, TENANT, SUBMISSION_ID)
LOG_FIELDS = (*LINE_FIELDS, *STRUCTURED_METADATA_FIELDS, *ACCESS_LOG_FIELDS)

REDACTED = "[redacted]"
_LOGGER_NAME_KEY = "logger_name"
_SENSITIVE_MARKERS = (
    "authorization",
    "cookie",
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "credential",
    "private_key",
)
_ROUTED_STDLIB_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "sqlalchemy",
    "sqlalchemy.engine",
    "sqlalchemy.pool",
    "alembic",
)


_SENSITIVE_PATTERN = re.compile("|".join(re.escape(marker) for marker in _SENSITIVE_MARKERS))
# Values of these types are never containers, so they need no recursive redaction.
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})


# Every log line checks every key, and the keys are few and fixed (field names), so the
# answer is cached; the bound keeps arbitrary keys (nested mappings) from growing it forever.
@functools.lru_cache(maxsize=2048)
def is_sensitive_key(key: str) -> bool:
    return _SENSITIVE_PATTERN.search(key.lower()) is not None


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            k: REDACTED if is_sensitive_key(str(k)) else _redact_value(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Replace values whose key names a secret (tokens, passwords, cookies, auth headers)."""
    # Reassigning existing keys while iterating is safe: the dict's size does not change.
    for key, value in event_dict.items():
        if is_sensitive_key(key):
            event_dict[key] = REDACTED
        elif type(value) not in _PLAIN_TYPES and isinstance(value, Mapping | list | tuple):
            event_dict[key] = _redact_value(value)
    return event_dict


def _name_logger(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    name = event_dict.pop(_LOGGER_NAME_KEY, None)
    if name is not None:
        event_dict[LOGGER] = name
    return event_dict


def add_trace_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Add trace_id/span_id of the current OpenTelemetry span (installed only when tracing)."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict[TRACE_ID] = format(context.trace_id, "032x")
        event_dict[SPAN_ID] = format(context.span_id, "016x")
    return event_dict


# Access-log characters held back at most before they are written (and so the memory taken).
ACCESS_LOG_HOLD_CHARS = 64 * 1024


class _CurrentStdout:
    """Writes to whatever `sys.stdout` is at the moment (test capture swaps it per phase).

    Access-log lines may be held back (`hold`) and written together: with PYTHONUNBUFFERED=1
    (the image sets it) every write is a system call, one per request otherwise. Any other
    line writes the held ones first, so the order of lines is kept. Only the process's own
    stdout holds lines back; a capture (tests) gets each line at once.
    """

    def __init__(self) -> None:
        self._held: list[str] = []
        self._held_chars = 0
        # Other threads log too (stdlib loggers): a line held while they write is not lost.
        self._lock = threading.Lock()

    def hold(self, text: str) -> None:
        if sys.stdout is not sys.__stdout__:
            sys.stdout.write(text)
            return
        with self._lock:
            self._held.append(text)
            self._held_chars += len(text)
            if self._held_chars >= ACCESS_LOG_HOLD_CHARS:
                self._release()

    def _release(self) -> None:
        """Write the held lines; called with the lock held."""
        if self._held:
            sys.stdout.write("".join(self._held))
            self._held.clear()
            self._held_chars = 0

    def write(self, text: str) -> int:
        with self._lock:
            self._release()
            return sys.stdout.write(text)

    def flush(self) -> None:
        with self._lock:
            self._release()
        sys.stdout.flush()

    def isatty(self) -> bool:
        return sys.stdout.isatty()


# One for the process: lines it holds survive a reconfiguration (tests configure per app).
_STDOUT = _CurrentStdout()


def _orjson_dumps(obj: Any, default: Callable[[Any], Any] | None = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


class IsoUtcTimestamper:
    """`structlog.processors.TimeStamper(fmt="iso", utc=True)`, cheaper: same text.

    "2026-01-02T03:04:05.678901Z" (no fraction when it is zero, as `isoformat` does). The
    part up to the second is formatted once per second instead of building a timezone-aware
    datetime for every line, which was the dearest step of the access log.
    """

    def __init__(self, key: str = TIMESTAMP) -> None:
        self.key = key
        # (second, "YYYY-MM-DDTHH:MM:SS") as one tuple: threads read it atomically.
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        microseconds = nanoseconds // 1000
        event_dict[self.key] = (
            f"{cached[1]}.{microseconds:06d}Z" if microseconds else f"{cached[1]}Z"
        )
        return event_dict


def _shared_processors(*, with_trace: bool) -> list[Processor]:
    processors: list[Processor] = [
        _name_logger,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        IsoUtcTimestamper(key=TIMESTAMP),
    ]
    if with_trace:
        processors.append(add_trace_context)
    processors.append(redact_secrets)
    return processors


def _renderer(log_format: str, stream: TextIO) -> Processor:
    use_console = log_format == "console" or (log_format == "auto" and stream.isatty())
    if use_console:
        return structlog.dev.ConsoleRenderer()
    return structlog.processors.JSONRenderer(serializer=_orjson_dumps)


def configure_logging(
    settings: LogSettings, *, with_trace: bool = False, stream: TextIO | None = None
) -> None:
    """Configure structlog and the stdlib loggers; safe to call more than once."""
    out: TextIO = stream or _STDOUT  # type: ignore[assignment]
    level = logging.getLevelName(settings.log_level)
    shared = _shared_processors(with_trace=with_trace)
    renderer = _renderer(settings.log_format, out)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    access_log.configure(
        fast=isinstance(renderer, structlog.processors.JSONRenderer) and level <= logging.INFO,
        processors=[
            processor for processor in shared if processor not in (_name_logger, redact_secrets)
        ],
        stream=out,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in _ROUTED_STDLIB_LOGGERS:
        stdlib_logger = logging.getLogger(name)
        stdlib_logger.handlers = []
        stdlib_logger.propagate = True
    # uvicorn's own access log is off; we write one line per request ourselves.
    logging.getLogger("uvicorn.access").disabled = True
    # SQLAlchemy logs statements at INFO when echo is on; otherwise keep it quiet.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    # Alembic announces every plugin it sets up and the dialect it picked, on every run:
    # set-up noise, not news. What it migrates ("Running upgrade ...") is kept.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    migration = logging.getLogger("alembic.runtime.migration")
    if not any(isinstance(f, _AlembicSetupFilter) for f in migration.filters):
        migration.addFilter(_AlembicSetupFilter())


class _AlembicSetupFilter(logging.Filter):
    """Drops the lines Alembic logs about itself before every run."""

    _SETUP = ("Context impl ", "Will assume ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._SETUP)


ACCESS_LOGGER = "berth.access"
ACCESS_EVENT = "request"
# How long an access line may wait in the stdout buffer (lost on a hard crash at most).
ACCESS_LOG_FLUSH_SECONDS = 0.2


class AccessLog:
    """The one line per request, written by the access-log middleware.

    In JSON at INFO (the production case) the line is built by the same processor functions
    as every other line (contextvars, level, timestamp, trace ids) and rendered with orjson,
    without structlog's generic per-call machinery, which was most of the access log's cost.
    Its fields are fixed and carry no secrets, so redaction is not needed. In any other
    configuration it is an ordinary structlog call.
    """

    def __init__(self) -> None:
        self._processors: list[Processor] = []
        self._stream: TextIO | None = None
        self._write: Callable[[str], object] | None = None
        self._fallback = get_logger(ACCESS_LOGGER)

    def configure(self, *, fast: bool, processors: list[Processor], stream: TextIO) -> None:
        self._processors = processors
        self._stream = stream if fast else None
        self._write = None
        if fast:
            self._write = stream.hold if isinstance(stream, _CurrentStdout) else stream.write

    def __call__(self, fields: dict[str, Any]) -> None:
        write = self._write
        if write is None:
            self._fallback.info(ACCESS_EVENT, **fields)
            return
        fields[EVENT] = ACCESS_EVENT
        fields[LOGGER] = ACCESS_LOGGER
        for processor in self._processors:
            fields = processor(None, "info", fields)  # type: ignore[assignment]  # dict in, dict out
        # No write system call per line: `flush_periodically` in the lifespan writes what is
        # held every ACCESS_LOG_FLUSH_SECONDS, and any other log line writes it first.
        write(orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE).decode())

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    async def flush_periodically(self, interval_seconds: float = ACCESS_LOG_FLUSH_SECONDS) -> None:
        """Bound how long an access line may sit in the buffer; runs until cancelled."""
        try:
            while True:
                await asyncio.sleep(interval_seconds)
                self.flush()
        finally:
            self.flush()


def get_logger(name: str) -> Any:
    """A structlog logger that names its module in the `logger` field."""
    # Initial values stay lazy (`.bind()` here would freeze the configuration of import time);
    # `logger` itself is a reserved keyword of get_logger, hence the rename processor.
    return structlog.get_logger(**{_LOGGER_NAME_KEY: name})


access_log = AccessLog()

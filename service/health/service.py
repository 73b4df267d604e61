"""Readiness: dependency checks run concurrently, each with a timeout, the report cached.

The cache and the lock mean a burst of probes triggers one round of checks, not one each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Gauge

from service.core.clock import utc_timestamp
from service.core.config import Settings
from service.core.slots import AppSlot
from service.core.store import KeyValueStore
from service.db.engine import Database
from service.health.schemas import CheckReport, ReadinessStatus, ReadyResponse


@dataclass(frozen=True)
class Check:
    name: str
    required: bool
    # None: not configured here, reported as such and never run.
    run: Callable[[], Awaitable[None]] | None


async def _run_check(check: Check, timeout_seconds: float) -> CheckReport:
    if check.run is None:
        return CheckReport(
            name=check.name, status="not_configured", required=check.required, latency_ms=0
        )
    started = time.perf_counter()
    error: str | None = None
    try:
        await asyncio.wait_for(check.run(), timeout_seconds)
    except TimeoutError:
        error = f"timed out after {timeout_seconds}s"
    except Exception as exc:  # any failure means "down"; the type is enough to act on
        error = type(exc).__name__
    return CheckReport(
        name=check.name,
        status="down" if error else "ok",
        required=check.required,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
        error=error,
    )


def _overall(reports: list[CheckReport]) -> ReadinessStatus:
    if any(r.status == "down" and r.required for r in reports):
        return "down"
    if any(r.status == "down" for r in reports):
        return "degraded"
    return "ok"


class ReadinessProbe:
    def __init__(
        self,
        checks: list[Check],
        *,
        timeout_seconds: float,
        cache_seconds: float,
        ready: Gauge | None = None,
    ) -> None:
        """`ready` (berth_dependency_ready) is set per check from each round's result."""
        self.checks = checks
        self.timeout_seconds = timeout_seconds
        self.cache_seconds = cache_seconds
        self.ready = ready
        self._lock = asyncio.Lock()
        self._cached: ReadyResponse | None = None
        self._cached_at = float("-inf")

    def _fresh(self) -> ReadyResponse | None:
        if time.monotonic() - self._cached_at < self.cache_seconds:
            return self._cached
        return None

    async def report(self) -> ReadyResponse:
        """The latest report, re-checked at most once per `cache_seconds`."""
        cached = self._fresh()
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._fresh()
            if cached is not None:
                return cached
            reports = list(
                await asyncio.gather(*(_run_check(c, self.timeout_seconds) for c in self.checks))
            )
            self._cached = ReadyResponse(
                status=_overall(reports),
                checked_at=utc_timestamp(),
                checks=reports,
            )
            self._cached_at = time.monotonic()
            self._publish(reports)
            return self._cached

    def _publish(self, reports: list[CheckReport]) -> None:
        if self.ready is None:
            return
        for report in reports:
            if report.status != "not_configured":
                self.ready.labels(dependency=report.name).set(1 if report.status == "ok" else 0)


def build_probe(
    settings: Settings,
    database: Database,
    store: KeyValueStore,
    *,
    mongo_ping: Callable[[], Awaitable[None]],
    ready: Gauge | None = None,
) -> ReadinessProbe:
    """Database always required; Redis when configured (optional if `redis.required` is off);
    MongoDB optional (an outage stops submissions, not the rest), reported as not configured
    without `BERTH_MONGO__URL`."""
    checks = [Check("database", True, database.ping)]
    if settings.redis.url is not None:
        checks.append(Check("redis", settings.redis.is_required, store.ping))
    if settings.submissions.enabled:
        checks.append(Check("mongo", False, mongo_ping if settings.mongo.url else None))
    return ReadinessProbe(
        checks,
        timeout_seconds=settings.observability.readiness_timeout_seconds,
        cache_seconds=settings.observability.readiness_cache_seconds,
        ready=ready,
    )


READINESS: AppSlot[ReadinessProbe] = AppSlot("readiness")

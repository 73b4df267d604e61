"""The submissions worker: one per replica, claiming work from every tenant's queue.

A claim is one atomic `find_one_and_update` (PENDING -> PROCESSING with our lease), so two
replicas never hold one submission at once; every later write is fenced on the lease (see
the repository), so a worker that lost its lease cannot overwrite another's result. Leases
that expire (a pod killed mid-way) are put back on the queue by whichever worker passes
next. On shutdown the worker stops claiming, lets what it holds finish (up to the grace),
and hands back whatever is still unfinished before the pools close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from service.core.clock import utc_now
from service.core.config import SubmissionSettings
from service.core.logging import SUBMISSION_ID, TENANT, get_logger
from service.documents.client import is_outage
from service.submissions.metrics import Outcome, SubmissionMetrics
from service.submissions.models import (
    SUBMISSION_MODELS,
    StoredLineItem,
    StoredTotal,
    SubmissionFields,
)
from service.submissions.processing import DutyRates, totals_of
from service.submissions.repository import SubmissionRepository
from service.submissions.service import mongo_time
from service.tenants.documents import TenantDocuments
from service.tenants.schemas import TenantEntry, TenantLookup

log = get_logger(__name__)
OTHER_TENANTS = "other"
REASON_MAX = 500


def worker_id() -> str:
    """Unique per process and start: the lease owner's name."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def backoff(attempt: int, settings: SubmissionSettings) -> timedelta:
    """Exponential: base, 2 x base, 4 x base ... capped."""
    seconds = settings.backoff_base_seconds * 2 ** max(0, attempt - 1)
    return timedelta(seconds=min(seconds, settings.backoff_max_seconds))


def _reason(exc: BaseException) -> str:
    # The type and message of our own errors; never a URL or a document.
    return f"{type(exc).__name__}: {exc}"[:REASON_MAX]


@dataclass
class _Held:
    tenant: TenantEntry
    submission_id: uuid.UUID


class SubmissionWorker:
    def __init__(
        self,
        settings: SubmissionSettings,
        registry: TenantLookup,
        documents: TenantDocuments,
        metrics: SubmissionMetrics,
        *,
        metrics_tenants: Iterable[str] = (),
        compute: Callable[[list[StoredLineItem], DutyRates], list[StoredTotal]] = totals_of,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """`compute` derives the totals (tests pass one that fails, to see the retries)."""
        self.settings = settings
        self.registry = registry
        self.documents = documents
        self.metrics = metrics
        self.metrics_tenants = frozenset(metrics_tenants)
        self.rates = DutyRates(settings.duty_rates, settings.default_duty_rate)
        self.id = worker_id()
        self._compute = compute
        self._clock = clock
        self._depths: dict[str, int] = {}
        self._housekept: dict[str, float] = {}
        self._round_start = 0
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: dict[uuid.UUID, _Held] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    def _now(self) -> datetime:
        return mongo_time(self._clock())

    def wake(self) -> None:
        """New work arrived on this replica: look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=self.id)

    async def stop(self, grace_seconds: float) -> None:
        """Stop claiming; wait up to `grace_seconds` for what is held, then release the rest."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_seconds)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._release_held()

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            # Cleared before the round: a wake during it (new work, a freed slot) is kept.
            self._wake.clear()
            claimed = await self._round()
            if claimed == 0 or self._slots.locked():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)

    async def _round(self) -> int:
        """One pass over every tenant, starting one further along each round, so a tenant
        with a long queue cannot keep the others' work waiting; how many were claimed."""
        tenants = self._tenants()
        if not tenants:
            return 0
        self._round_start = (self._round_start + 1) % len(tenants)
        served = {tenant.slug for tenant in tenants}
        self._depths = {slug: depth for slug, depth in self._depths.items() if slug in served}
        claimed = 0
        for tenant in tenants[self._round_start :] + tenants[: self._round_start]:
            if self._stopping:
                break
            claimed += await self._pass(tenant)
        self._publish_depths()
        return claimed

    def _tenants(self) -> list[TenantEntry]:
        entries = (self.registry.get(slug) for slug in self.registry.slugs())
        return [e for e in entries if e is not None and e.is_serving and self.documents.serves(e)]

    async def _pass(self, tenant: TenantEntry) -> int:
        """Housekeeping when due, then claim as much as there are free slots; how many."""
        try:
            async with self.documents.lease(tenant) as database:
                repository = SubmissionRepository(await database.models(SUBMISSION_MODELS))
                if self._housekeeping_due(tenant.slug):
                    await self._requeue_expired(repository)
                    self._depths[tenant.slug] = await repository.count_pending()
                return await self._claim_while_free(tenant, repository)
        except Exception as exc:  # one tenant's outage must not stop the others
            log.warning("submission_worker_pass_failed", **{TENANT: tenant.slug},
                        error=type(exc).__name__, outage=is_outage(exc))  # fmt: skip
            return 0

    def _housekeeping_due(self, slug: str) -> bool:
        """Expired leases and the queue depth once per poll interval per tenant, not on every
        round of a busy worker."""
        now = time.monotonic()
        if now - self._housekept.get(slug, float("-inf")) < self.settings.poll_seconds:
            return False
        self._housekept[slug] = now
        return True

    async def _requeue_expired(self, repository: SubmissionRepository) -> None:
        expired = await repository.requeue_expired(self._now(), self.settings.max_attempts)
        if expired.total:
            self.metrics.lease_expiries.inc(expired.total)
            log.warning("submission_leases_expired", requeued=expired.requeued,
                        failed=expired.failed)  # fmt: skip

    async def _claim_while_free(self, tenant: TenantEntry, repository: SubmissionRepository) -> int:
        """At most `worker_concurrency` from this tenant per pass: when processing keeps up
        with claiming, slots never run out, and one long queue would hold the pass."""
        claimed = 0
        lease = timedelta(seconds=self.settings.lease_seconds)
        quota = self.settings.worker_concurrency
        while not self._stopping and not self._slots.locked() and claimed < quota:
            submission = await repository.claim(self.id, self._now(), lease)
            if submission is None:
                break
            claimed += 1
            await self._slots.acquire()
            self._held[submission.id] = _Held(tenant, submission.id)
            task = asyncio.get_running_loop().create_task(self._process(tenant, submission))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return claimed

    def _publish_depths(self) -> None:
        """Per listed tenant, the rest summed as "other" (a label per tenant is unbounded);
        each tenant's last count stands until its next housekeeping."""
        by_label: dict[str, int] = {OTHER_TENANTS: 0}
        for slug, depth in self._depths.items():
            label = slug if slug in self.metrics_tenants else OTHER_TENANTS
            by_label[label] = by_label.get(label, 0) + depth
        for label, depth in by_label.items():
            self.metrics.queue_depth.labels(tenant=label).set(depth)

    # -- one submission ----------------------------------------------------------------

    async def _process(self, tenant: TenantEntry, submission: SubmissionFields) -> None:
        started = time.perf_counter()
        structlog.contextvars.bind_contextvars(
            **{TENANT: tenant.slug, SUBMISSION_ID: str(submission.id)}
        )
        try:
            outcome = await self._settle(tenant, submission)
        except asyncio.CancelledError:
            raise  # still held: `stop` hands it back
        except Exception as exc:  # the server went away: the lease expires, it is requeued
            log.warning("submission_settle_failed", error=type(exc).__name__)
            outcome = Outcome.LOST
        finally:
            self._slots.release()
            self._wake.set()  # a slot is free: claim more without waiting for the poll
        self._held.pop(submission.id, None)
        self.metrics.finished(outcome, time.perf_counter() - started)
        log.info("submission_processed", outcome=outcome.value, attempt=submission.attempts)

    async def _settle(self, tenant: TenantEntry, submission: SubmissionFields) -> Outcome:
        async with self.documents.lease(tenant) as database:
            repository = SubmissionRepository(await database.models(SUBMISSION_MODELS))
            try:
                totals = self._compute(submission.items, self.rates)
                stored = await repository.complete(submission.id, self.id, totals, self._now())
                return Outcome.PROCESSED if stored else Outcome.LOST
            except Exception as exc:
                return await self._after_failure(repository, submission, exc)

    async def _after_failure(
        self, repository: SubmissionRepository, submission: SubmissionFields, exc: Exception
    ) -> Outcome:
        reason = _reason(exc)
        log.warning("submission_attempt_failed", attempt=submission.attempts, error=reason)
        if submission.attempts >= self.settings.max_attempts:
            reason = f"gave up after {submission.attempts} attempts: {reason}"[:REASON_MAX]
            stored = await repository.fail(submission.id, self.id, reason, self._now())
            return Outcome.FAILED if stored else Outcome.LOST
        now = self._now()
        not_before = now + backoff(submission.attempts, self.settings)
        stored = await repository.retry_later(submission.id, self.id, not_before, reason, now)
        return Outcome.RETRIED if stored else Outcome.LOST

    async def _release_held(self) -> None:
        """Hand back what is still held (cancelled by the shutdown): PENDING again."""
        tenants = {held.tenant.slug: held.tenant for held in self._held.values()}
        for tenant in tenants.values():
            try:
                async with self.documents.lease(tenant) as database:
                    repository = SubmissionRepository(await database.models(SUBMISSION_MODELS))
                    released = await repository.release(self.id, self._now())
                log.info("submissions_released", **{TENANT: tenant.slug}, count=released)
            except Exception as exc:  # the lease expires by itself; nothing is lost
                log.warning("submission_release_failed", **{TENANT: tenant.slug},
                            error=type(exc).__name__)  # fmt: skip
        self._held.clear()

"""The submissions worker in-process, on the real MongoDB server: processing (woken by a
POST, fair between tenants), retries with backoff, expired leases, shutdown, lost leases."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from service.container import container_of
from service.core.clock import utc_now
from service.documents.client import MongoDocument
from service.submissions.metrics import (
    SUBMISSION_LEASE_EXPIRIES,
    SUBMISSION_QUEUE_DEPTH,
    SUBMISSIONS_PROCESSED,
    Outcome,
    SubmissionMetrics,
)
from service.submissions.models import StoredLineItem, StoredTotal, SubmissionFields
from service.submissions.processing import DutyRates, totals_of
from service.submissions.schemas import SubmissionStatus
from service.submissions.service import mongo_time
from service.submissions.worker import SubmissionWorker
from service.tenants.schemas import TenantEntry
from tests.service.submissions.conftest import SUBMISSIONS, SubmissionsApi, SubmissionsApiFactory
from tests.service.submissions.factories import declaration, line_item
from tests.service.submissions.worker_harness import (
    Queue,
    insert_many,
    new_submission,
    queue_of,
)
from tests.support import eventually, metric_value

PENDING, PROCESSING = SubmissionStatus.PENDING.value, SubmissionStatus.PROCESSING.value
PROCESSED, FAILED = SubmissionStatus.PROCESSED.value, SubmissionStatus.FAILED.value
FOUR_PLACES = Decimal("0.0001")
DUTY_RATES = {"CN": 0.1, "US": 0.025}
DEFAULT_DUTY_RATE = 0.05


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def acme(api: SubmissionsApi, mongo: AsyncMongoClient[MongoDocument]) -> Queue:
    """Tenant acme's submissions, read and written around the service."""
    return await queue_of(mongo, api.database_of("acme"))


@dataclass
class Running:
    """A worker built on the app's own registry and document databases, started."""

    worker: SubmissionWorker
    registry: CollectorRegistry

    def count(self, outcome: Outcome) -> float:
        value = self.registry.get_sample_value(SUBMISSIONS_PROCESSED, {"outcome": outcome.value})
        return 0.0 if value is None else value


WorkerFactory = Callable[..., Running]


@pytest.fixture
async def start_worker(api: SubmissionsApi) -> AsyncIterator[WorkerFactory]:
    """`start_worker(cls=..., compute=..., **settings)`: a started worker on the app's parts
    (the app's own worker is off); every one is stopped before the app closes its pools."""
    started: list[SubmissionWorker] = []
    container = container_of(api.app)

    def factory(
        cls: type[SubmissionWorker] = SubmissionWorker,
        *,
        compute: Callable[[list[StoredLineItem], DutyRates], list[StoredTotal]] = totals_of,
        **settings: Any,
    ) -> Running:
        assert container.submissions.worker is None
        feature = container.settings.submissions.model_copy(
            update={"poll_seconds": 0.05, **settings}
        )
        registry = CollectorRegistry()
        worker = cls(feature, container.tenancy.registry, container.tenancy.documents,
                     SubmissionMetrics(registry), compute=compute)  # fmt: skip
        worker.start()
        started.append(worker)
        return Running(worker, registry)

    yield factory
    for worker in started:
        await worker.stop(0)


class GatedWorker(SubmissionWorker):
    """Its settle (computing and writing the result) waits until `gate` opens: a slow
    database or a long computation, as far as the rest of the worker can tell."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def _settle(self, tenant: TenantEntry, submission: SubmissionFields) -> Outcome:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super()._settle(tenant, submission)


# -- helpers -------------------------------------------------------------------------------


def expected_totals(items: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Value and duty per currency, computed here from the line items and the rates."""
    values: defaultdict[str, Decimal] = defaultdict(Decimal)
    duties: defaultdict[str, Decimal] = defaultdict(Decimal)
    for item in items:
        value = (Decimal(item["quantity"]) * Decimal(item["unit_value"])).quantize(
            FOUR_PLACES, rounding=ROUND_HALF_EVEN
        )
        rate = Decimal(str(DUTY_RATES.get(item["origin_country"], DEFAULT_DUTY_RATE)))
        values[item["currency"]] += value
        duties[item["currency"]] += value * rate
    return [
        {"currency": currency,
         "value": values[currency].quantize(FOUR_PLACES, rounding=ROUND_HALF_EVEN),
         "duty": duties[currency].quantize(FOUR_PLACES, rounding=ROUND_HALF_EVEN)}
        for currency in sorted(values)
    ]  # fmt: skip


async def reaches(queue: Queue, submission_id: uuid.UUID, status: str,
                  timeout: float = 5.0) -> MongoDocument:  # fmt: skip
    async def probe() -> MongoDocument | None:
        found = await queue.raw(submission_id)
        return found if found["status"] == status else None

    found: MongoDocument = await eventually(probe, timeout)
    return found


def processing_by(owner: str) -> dict[str, Any]:
    return {"status": PROCESSING, "lease_owner": owner}


# -- processing ----------------------------------------------------------------------------


async def test_a_submitted_declaration_ends_processed_with_totals_and_duty_woken_by_the_post(
    submissions_api_for: SubmissionsApiFactory,
) -> None:
    # Polling every 30 s: only the POST's wake-up can get it processed within seconds.
    api = await submissions_api_for(submissions={
        "worker_enabled": True, "poll_seconds": 30, "duty_rates": DUTY_RATES,
        "default_duty_rate": DEFAULT_DUTY_RATE})  # fmt: skip
    registry = container_of(api.app).core.metrics.registry
    # The worker's first round (at start) is over and it is idle, waiting out its 30 s.
    idle = {"tenant": "other"}
    await eventually(lambda: registry.get_sample_value(SUBMISSION_QUEUE_DEPTH, idle) is not None)
    await asyncio.sleep(0.2)
    headers = await api.user()
    items = [
        line_item(quantity="2", unit_value="10.50", currency="EUR", origin_country="CN"),
        line_item(quantity="3", unit_value="1.3333", currency="EUR", origin_country="US"),
        line_item(quantity="1", unit_value="100", currency="USD", origin_country="DE"),
        line_item(quantity="0.5", unit_value="7.77", currency="USD", origin_country="CN"),
    ]

    started = time.monotonic()
    created = await api.submit(headers, declaration(items=1) | {"items": items})

    async def processed() -> dict[str, Any] | None:
        response = await api.client.get(f"{SUBMISSIONS}/{created['id']}", headers=headers)
        body: dict[str, Any] = response.json()
        return body if body["status"] == PROCESSED else None

    body = await eventually(processed, timeout=3.0)
    assert time.monotonic() - started < 3.0
    totals = [{"currency": t["currency"], "value": Decimal(t["value"]),
               "duty": Decimal(t["duty"])} for t in body["totals"]]  # fmt: skip
    assert totals == expected_totals(items)
    # And by hand: EUR 21.0000 + 3.9999, duty 2.1 + 0.0999975; USD 100 + 3.885, 5 + 0.3885.
    assert totals == [
        {"currency": "EUR", "value": Decimal("24.9999"), "duty": Decimal("2.2000")},
        {"currency": "USD", "value": Decimal("103.8850"), "duty": Decimal("5.3885")},
    ]
    assert body["attempts"] == 1
    assert body["processed_at"] is not None
    assert body["failure_reason"] is None
    assert metric_value(api.app, SUBMISSIONS_PROCESSED, outcome="processed") == 1
    assert metric_value(api.app, SUBMISSIONS_PROCESSED, outcome="failed") == 0


async def test_the_claim_leaves_no_lease_behind_once_processed(
    start_worker: WorkerFactory, acme: Queue
) -> None:
    submission = new_submission()
    await acme.repository.insert(submission)

    running = start_worker()

    stored = await reaches(acme, submission.id, PROCESSED)
    assert stored["attempts"] == 1
    assert "lease_owner" not in stored
    assert "lease_expires_at" not in stored
    assert stored["processed_at"] >= submission.created_at
    assert running.count(Outcome.PROCESSED) == 1


async def test_a_tenant_with_a_long_queue_does_not_keep_another_tenants_work_waiting(
    start_worker: WorkerFactory, api: SubmissionsApi, acme: Queue,
    mongo: AsyncMongoClient[MongoDocument],
) -> None:  # fmt: skip
    beta = await queue_of(mongo, api.database_of("beta"))
    queues = {"acme": acme, "beta": beta}
    for queue in queues.values():
        await insert_many(queue, [new_submission() for _ in range(40)])

    # Processing keeps up with claiming here (slots free up as fast as they are taken).
    start_worker(worker_concurrency=4)

    async def drained() -> bool:
        return all([await queue.count(status=PROCESSED) == 40 for queue in queues.values()])

    await eventually(drained, timeout=20, pause=0.1)
    finished = {
        slug: sorted([doc["processed_at"] async for doc in queue.collection.find({})])
        for slug, queue in queues.items()
    }
    first, other = sorted(finished, key=lambda slug: finished[slug][-1])
    # When the first tenant's queue was empty, the other's had been served alongside it.
    served_meanwhile = sum(1 for at in finished[other] if at <= finished[first][-1])
    assert served_meanwhile >= 20, (first, served_meanwhile)


# -- failures and retries ------------------------------------------------------------------


async def test_a_failing_computation_is_retried_with_backoff_then_fails_with_a_reason(
    start_worker: WorkerFactory, acme: Queue
) -> None:
    calls: list[float] = []

    def fails(items: list[StoredLineItem], rates: DutyRates) -> list[StoredTotal]:
        calls.append(time.monotonic())
        raise ValueError("rates table unavailable")

    submission = new_submission()
    await acme.repository.insert(submission)
    running = start_worker(compute=fails, max_attempts=3, backoff_base_seconds=0.4,
                           backoff_max_seconds=5)  # fmt: skip

    # Between attempts: PENDING again, the reason kept, not before now + the backoff.
    async def pending_after(attempt: int) -> MongoDocument | None:
        found = await acme.raw(submission.id)
        return found if (found["status"], found["attempts"]) == (PENDING, attempt) else None

    first = await eventually(lambda: pending_after(1), timeout=3)
    assert first["failure_reason"] == "ValueError: rates table unavailable"
    assert first["not_before"] >= submission.not_before + timedelta(seconds=0.4)
    second = await eventually(lambda: pending_after(2), timeout=3)
    assert second["failure_reason"] == "ValueError: rates table unavailable"
    # Exponential: the second wait is twice the first.
    assert second["not_before"] >= first["not_before"] + timedelta(seconds=0.8)

    final = await reaches(acme, submission.id, FAILED, timeout=4)
    assert final["attempts"] == 3
    assert final["failure_reason"] == (
        "gave up after 3 attempts: ValueError: rates table unavailable"
    )
    assert "lease_owner" not in final
    assert final["processed_at"] is None
    assert final["totals"] is None
    assert len(calls) == 3
    # Each attempt waited out its backoff (0.4 s, then 0.8 s).
    assert calls[1] - calls[0] >= 0.4 - 0.05
    assert calls[2] - calls[1] >= 0.8 - 0.05
    await asyncio.sleep(0.2)  # and it is never claimed again
    assert len(calls) == 3
    assert (running.count(Outcome.RETRIED), running.count(Outcome.FAILED)) == (2, 1)
    assert running.count(Outcome.PROCESSED) == 0


async def test_a_computation_that_recovers_ends_processed_and_forgets_the_failure(
    start_worker: WorkerFactory, acme: Queue
) -> None:
    calls: list[int] = []

    def flaky(items: list[StoredLineItem], rates: DutyRates) -> list[StoredTotal]:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("transient")
        return totals_of(items, rates)

    submission = new_submission()
    await acme.repository.insert(submission)
    running = start_worker(compute=flaky, max_attempts=5, backoff_base_seconds=0.05)

    stored = await reaches(acme, submission.id, PROCESSED)

    assert stored["attempts"] == 3
    assert stored["failure_reason"] is None
    assert [t["currency"] for t in stored["totals"]] == ["EUR"]
    assert (running.count(Outcome.RETRIED), running.count(Outcome.PROCESSED)) == (2, 1)


# -- expired leases ------------------------------------------------------------------------


async def test_expired_leases_go_back_to_the_queue_and_one_out_of_attempts_fails(
    submissions_api_for: SubmissionsApiFactory, mongo: AsyncMongoClient[MongoDocument]
) -> None:
    api = await submissions_api_for(submissions={"worker_enabled": True, "poll_seconds": 0.05,
                                                 "max_attempts": 3})  # fmt: skip
    acme = await queue_of(mongo, api.database_of("acme"))
    now = mongo_time(utc_now())
    past, future = now - timedelta(seconds=5), now + timedelta(minutes=10)
    dead: dict[str, Any] = {
        "status": SubmissionStatus.PROCESSING, "lease_owner": "dead-host:1:0badc0de",
        "lease_expires_at": past, "not_before": now - timedelta(seconds=10)}  # fmt: skip
    crashed_once = new_submission(**dead, attempts=1)
    out_of_attempts = new_submission(**dead, attempts=3)
    # Still leased by a live worker elsewhere: not ours to take.
    held_elsewhere = new_submission(**{**dead, "lease_owner": "live-host:2:0000beef",
                                       "lease_expires_at": future}, attempts=1)  # fmt: skip

    await insert_many(acme, [crashed_once, out_of_attempts, held_elsewhere])

    requeued = await reaches(acme, crashed_once.id, PROCESSED)
    assert requeued["attempts"] == 2
    assert "lease_owner" not in requeued
    failed = await reaches(acme, out_of_attempts.id, FAILED)
    assert failed["attempts"] == 3
    assert failed["failure_reason"] == "the lease expired on the last attempt; giving up"
    assert "lease_owner" not in failed
    await eventually(lambda: metric_value(api.app, SUBMISSION_LEASE_EXPIRIES) == 2)
    await asyncio.sleep(0.3)  # several more rounds of housekeeping
    untouched = await acme.raw(held_elsewhere.id)
    assert (untouched["status"], untouched["lease_owner"], untouched["attempts"]) == (
        PROCESSING, "live-host:2:0000beef", 1)  # fmt: skip
    assert metric_value(api.app, SUBMISSION_LEASE_EXPIRIES) == 2
    assert metric_value(api.app, SUBMISSIONS_PROCESSED, outcome="processed") == 1


# -- shutdown ------------------------------------------------------------------------------


async def test_on_stop_held_work_that_finishes_within_the_grace_is_processed(
    start_worker: WorkerFactory, acme: Queue
) -> None:
    submission = new_submission()
    await acme.repository.insert(submission)
    running = start_worker(GatedWorker)
    worker = running.worker
    assert isinstance(worker, GatedWorker)
    await eventually(lambda: worker.waiting == 1)
    assert await acme.count(**processing_by(worker.id)) == 1

    loop = asyncio.get_running_loop()
    loop.call_later(0.3, worker.gate.set)
    started = time.monotonic()
    await worker.stop(5.0)

    assert 0.25 < time.monotonic() - started < 2.0
    stored = await acme.raw(submission.id)
    assert (stored["status"], stored["attempts"]) == (PROCESSED, 1)
    assert await acme.count(lease_owner=worker.id) == 0
    assert running.count(Outcome.PROCESSED) == 1


async def test_on_stop_held_work_past_the_grace_is_handed_back_uncounted_and_nothing_new_is_claimed(
    start_worker: WorkerFactory, acme: Queue
) -> None:
    held = [new_submission(reference=f"held-{n}") for n in range(2)]
    waiting = new_submission(reference="waiting")
    await insert_many(acme, held)
    running = start_worker(GatedWorker, worker_concurrency=4)
    worker = running.worker
    assert isinstance(worker, GatedWorker)
    await eventually(lambda: worker.waiting == 2)

    started = time.monotonic()
    stopping = asyncio.create_task(worker.stop(0.5))
    await asyncio.sleep(0.05)
    # Arrives while the held work has its grace: slots are free, but no more claims.
    await acme.repository.insert(waiting)
    worker.wake()
    await stopping

    assert 0.25 < time.monotonic() - started < 2.0
    assert await acme.count(status=PROCESSING) == 0
    assert await acme.count(lease_owner=worker.id) == 0
    for submission in [*held, waiting]:
        stored = await acme.raw(submission.id)
        assert (stored["status"], stored["attempts"]) == (PENDING, 0), stored["reference"]
        assert stored.get("lease_owner") is None
        assert stored.get("lease_expires_at") is None
    assert worker.waiting == 0
    worker.gate.set()
    await asyncio.sleep(0.2)  # a stopped worker does nothing more
    assert await acme.count(status=PENDING) == 3
    assert sum(running.count(outcome) for outcome in Outcome) == 0

    # Handed back, the next worker's attempt is the first.
    successor = start_worker()
    for submission in [*held, waiting]:
        stored = await reaches(acme, submission.id, PROCESSED)
        assert stored["attempts"] == 1
    assert successor.count(Outcome.PROCESSED) == 3


# -- lost leases ---------------------------------------------------------------------------


async def test_a_worker_that_lost_its_lease_cannot_store_its_result(acme: Queue) -> None:
    submission = new_submission()
    await acme.repository.insert(submission)
    repository = acme.repository
    now = mongo_time(utc_now())

    first = await repository.claim("first", now, timedelta(seconds=1))
    assert first is not None
    assert first.id == submission.id
    # The first worker stalls past its lease; another puts it back and takes it.
    later = now + timedelta(seconds=2)
    expired = await repository.requeue_expired(later, max_attempts=5)
    assert (expired.requeued, expired.failed) == (1, 0)
    second = await repository.claim("second", later, timedelta(seconds=30))
    assert second is not None
    assert second.attempts == 2

    totals = totals_of(first.items, DutyRates({}, 0.05))
    assert await repository.complete(submission.id, "first", totals, later) is False
    assert await repository.retry_later(submission.id, "first", later, "late", later) is False
    assert await repository.fail(submission.id, "first", "late", later) is False
    assert await repository.release("first", later) == 0
    stored = await acme.raw(submission.id)
    assert (stored["status"], stored["lease_owner"], stored["attempts"]) == (
        PROCESSING, "second", 2)  # fmt: skip

    assert await repository.complete(submission.id, "second", totals, later) is True
    stored = await acme.raw(submission.id)
    assert (stored["status"], stored["attempts"]) == (PROCESSED, 2)


async def test_the_worker_counts_a_result_on_a_lost_lease_as_lost_and_leaves_the_new_owner_be(
    start_worker: WorkerFactory, acme: Queue
) -> None:
    submission = new_submission()
    await acme.repository.insert(submission)
    running = start_worker(GatedWorker, lease_seconds=30)
    worker = running.worker
    assert isinstance(worker, GatedWorker)
    await eventually(lambda: worker.waiting == 1)

    # Its lease runs out meanwhile (as seen from later on) and another replica takes it.
    later = mongo_time(utc_now()) + timedelta(seconds=31)
    assert (await acme.repository.requeue_expired(later, max_attempts=5)).requeued == 1
    taken = await acme.repository.claim("other-replica", later, timedelta(seconds=30))
    assert taken is not None
    worker.gate.set()

    await eventually(lambda: running.count(Outcome.LOST) == 1)
    stored = await acme.raw(submission.id)
    assert (stored["status"], stored["lease_owner"], stored["attempts"]) == (
        PROCESSING, "other-replica", 2)  # fmt: skip
    assert stored["totals"] is None
    assert running.count(Outcome.PROCESSED) == 0

"""Helpers for the worker tests, and a process that runs only a worker and hangs mid-way.

`python -m tests.service.submissions.worker_harness hang` (settings from BERTH_* in the
environment) runs a real `SubmissionWorker` on the configured tenants whose computation
never returns: it claims what its slots allow, prints HANG_MARKER when the first
computation starts and then blocks its event loop for good, holding those leases. A test
then kills it with SIGKILL: a replica dying mid-processing.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from service.core.config import MongoSettings, Settings
from service.documents.client import MongoDocument, create_client
from service.submissions.metrics import SubmissionMetrics
from service.submissions.models import StoredLineItem, StoredTotal, SubmissionFields, bind_models
from service.submissions.processing import DutyRates
from service.submissions.repository import SubmissionRepository
from service.submissions.worker import SubmissionWorker
from service.tenants.documents import TenantDocuments
from service.tenants.registry import TenantRegistry
from tests.service.submissions.factories import stored_line, stored_submission

HANG_MARKER = "HARNESS-COMPUTING"


@dataclass(frozen=True)
class Queue:
    """One tenant's submissions, read and written from outside the service under test."""

    repository: SubmissionRepository
    collection: AsyncCollection[MongoDocument]

    async def raw(self, submission_id: uuid.UUID) -> MongoDocument:
        found = await self.collection.find_one({"_id": submission_id})
        assert found is not None, f"submission {submission_id} is gone"
        return found

    async def count(self, **query: Any) -> int:
        return await self.collection.count_documents(query)


def client_for_tests(url: str) -> AsyncMongoClient[MongoDocument]:
    """A client configured as the service's own (UUIDs, aware datetimes)."""
    return create_client(url, MongoSettings(url=url))


async def queue_of(client: AsyncMongoClient[MongoDocument], database: str) -> Queue:
    """The tenant database's submissions through the service's own bound classes."""
    models = await bind_models(client[database])
    return Queue(SubmissionRepository(models), models.submission.get_pymongo_collection())


def new_submission(
    items: list[tuple[str, str, str, str]] | None = None, **fields: Any
) -> SubmissionFields:
    """A PENDING submission as the API stores it; `items` are (quantity, unit value,
    currency, origin) and `fields` override (a claimed one: status, lease_owner ...)."""
    lines = [
        stored_line(quantity, unit, currency, origin)
        for quantity, unit, currency, origin in items or [("2", "10.50", "EUR", "CN")]
    ]
    return stored_submission(lines, **fields)


async def insert_many(queue: Queue, submissions: list[SubmissionFields]) -> None:
    documents = [queue.repository.models.submission.model_validate(s.model_dump())
                 for s in submissions]  # fmt: skip
    await queue.repository.models.submission.insert_many(documents)


def hang(items: list[StoredLineItem], rates: DutyRates) -> list[StoredTotal]:
    """A computation that never returns (and blocks the event loop, as a hung CPU would)."""
    print(HANG_MARKER, flush=True)
    while True:
        time.sleep(3600)


async def run_hanging_worker() -> None:
    settings = Settings(_env_file=None)
    registry = TenantRegistry.read(settings.tenants.registry_dir)
    documents = TenantDocuments(settings.mongo)
    metrics = SubmissionMetrics(CollectorRegistry())
    worker = SubmissionWorker(settings.submissions, registry, documents, metrics, compute=hang)
    print(f"HARNESS-WORKER {worker.id}", flush=True)
    worker.start()
    await asyncio.Event().wait()


def main(argv: list[str]) -> int:
    if argv != ["hang"]:
        print("usage: python -m tests.service.submissions.worker_harness hang", file=sys.stderr)
        return 2
    asyncio.run(run_hanging_worker())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

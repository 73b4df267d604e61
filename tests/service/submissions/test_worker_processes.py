"""The submissions worker across real OS processes (`python -m service serve`, as replicas
run it) sharing one MongoDB server and tenant registry: no submission is processed twice,
and one held by a replica killed with SIGKILL is requeued and processed by a survivor."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from service.core.logging import SUBMISSION_ID
from service.documents.client import MongoDocument
from service.submissions.metrics import SUBMISSION_LEASE_EXPIRIES, SUBMISSIONS_PROCESSED
from service.submissions.schemas import SubmissionStatus
from tests.conftest import Served, ServeFactory, SpawnFactory
from tests.mongo_server import MongoServer
from tests.service.conftest import SqliteTenants
from tests.service.submissions.worker_harness import (
    HANG_MARKER,
    Queue,
    insert_many,
    new_submission,
    queue_of,
)
from tests.support import MetricSamples, eventually, process_env, scrape_metrics

PROCESSED = SubmissionStatus.PROCESSED.value
PROCESSING = SubmissionStatus.PROCESSING.value
REPLICAS = 4
# Spread over four tenants: the test server scans a collection to claim from it, so four
# queues of ~100 are processed much faster than one of 400 (and the rounds rotate tenants).
PER_TENANT = {"acme": 104, "beta": 104, "gamma": 104, "delta": 104}
MIXED_ITEMS = [("2", "10.50", "EUR", "CN"), ("1", "99.99", "USD", "US")]


@pytest.fixture
def replica_env(
    sqlite_tenants: SqliteTenants,
    registry_dir: Path,
    tmp_path: Path,
    mongo_server: MongoServer,
    mongo_prefix: str,
) -> dict[str, str]:
    """What every replica shares: the tenant registry (PER_TENANT's tenants), the MongoDB
    server and database prefix."""
    sqlite_tenants(*PER_TENANT)
    return {
        "BERTH_TENANTS__REGISTRY_DIR": str(registry_dir),
        "BERTH_TENANTS__SQLITE_DIR": str(tmp_path / "tenant-dbs"),
        "BERTH_MONGO__URL": mongo_server.url,
        "BERTH_MONGO__DATABASE_PREFIX": mongo_prefix,
        "BERTH_SUBMISSIONS__WORKER_ENABLED": "true",
        "BERTH_SUBMISSIONS__POLL_SECONDS": "3",
        "BERTH_SUBMISSIONS__WORKER_CONCURRENCY": "4",
        "BERTH_HTTP__GRACEFUL_SHUTDOWN_SECONDS": "1",
    }


async def scrape(replica: Served) -> MetricSamples:
    return await scrape_metrics(replica.base_url)


def outcome(samples: MetricSamples, name: str) -> float:
    return samples.get((SUBMISSIONS_PROCESSED, (("outcome", name),)), 0.0)


def processed_ids(replica: Served) -> list[str]:
    """The submission ids the replica's log says it processed."""
    return [
        str(event[SUBMISSION_ID])
        for event in replica.process.events()
        if event.get("event") == "submission_processed" and event.get("outcome") == "processed"
    ]


async def test_replicas_never_process_a_submission_twice(
    serve: ServeFactory, replica_env: dict[str, str], mongo: AsyncMongoClient[MongoDocument],
    mongo_prefix: str,
) -> None:  # fmt: skip
    replicas = await asyncio.gather(*(serve(**replica_env) for _ in range(REPLICAS)))
    queues = {slug: await queue_of(mongo, f"{mongo_prefix}{slug}") for slug in PER_TENANT}
    made: dict[str, list[uuid.UUID]] = {}
    # All replicas are up and polling: every submission is there for each of them to take.
    for slug, count in PER_TENANT.items():
        submissions = [new_submission(MIXED_ITEMS, reference=f"{slug}-{n}") for n in range(count)]
        made[slug] = [submission.id for submission in submissions]
        await insert_many(queues[slug], submissions)
    total = sum(PER_TENANT.values())

    async def all_processed() -> bool:
        done = [await queues[slug].count(status=PROCESSED) for slug in PER_TENANT]
        return sum(done) == total

    await eventually(all_processed, timeout=120, pause=1.0)

    for slug, queue in queues.items():
        async for stored in queue.collection.find({}):
            assert stored["status"] == PROCESSED, stored
            assert stored["attempts"] == 1, stored
            assert "lease_owner" not in stored
            assert "lease_expires_at" not in stored
            assert [t["currency"] for t in stored["totals"]] == ["EUR", "USD"]
        assert await queue.count() == PER_TENANT[slug]

    async def counted() -> list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] | None:
        scraped = [await scrape(replica) for replica in replicas]
        return scraped if sum(outcome(s, "processed") for s in scraped) >= total else None

    scraped = await eventually(counted, timeout=5, pause=0.2)
    per_replica = [outcome(samples, "processed") for samples in scraped]
    assert sum(per_replica) == total, per_replica
    assert sum(1 for n in per_replica if n > 0) >= 2, per_replica
    for samples in scraped:
        assert outcome(samples, "lost") == 0
        assert outcome(samples, "retried") == 0
        assert outcome(samples, "failed") == 0
    # Each replica's log names what it processed: together every submission, once.
    logged = Counter(sid for replica in replicas for sid in processed_ids(replica))
    assert set(logged) == {str(sid) for ids in made.values() for sid in ids}
    assert max(logged.values()) == 1
    assert [len(processed_ids(replica)) for replica in replicas] == per_replica


async def test_a_submission_held_by_a_killed_replica_is_requeued_and_processed_by_a_survivor(
    serve: ServeFactory, spawn: SpawnFactory, replica_env: dict[str, str],
    mongo: AsyncMongoClient[MongoDocument], mongo_prefix: str,
) -> None:  # fmt: skip
    env = {**replica_env, "BERTH_SUBMISSIONS__LEASE_SECONDS": "1"}
    acme: Queue = await queue_of(mongo, f"{mongo_prefix}acme")
    submissions = [new_submission(reference=f"kill-{n}") for n in range(5)]
    await insert_many(acme, submissions)

    # A replica whose worker (one slot) claims one and hangs computing it.
    doomed = spawn("-m", "tests.service.submissions.worker_harness", "hang",
                   env=process_env(**{**env, "BERTH_SUBMISSIONS__WORKER_CONCURRENCY": "1"}),
                   name="doomed")  # fmt: skip
    await eventually(lambda: HANG_MARKER in doomed.stdout() or not doomed.running(), timeout=15)
    assert doomed.running(), doomed.describe()
    owner = next(line.split()[1] for line in doomed.stdout().splitlines()
                 if line.startswith("HARNESS-WORKER "))  # fmt: skip
    assert f":{doomed.pid}:" in owner
    held = await acme.collection.find_one({"status": PROCESSING})
    assert held is not None
    assert (held["lease_owner"], held["attempts"]) == (owner, 1)
    assert await acme.count(status=PROCESSING) == 1

    doomed.signal(signal.SIGKILL)
    assert await doomed.wait(timeout=5) == -signal.SIGKILL
    # Dead, it still holds the lease (nothing can hand it back).
    assert await acme.count(status=PROCESSING, lease_owner=owner) == 1

    survivor = await serve(**env)

    async def all_processed() -> bool:
        return await acme.count(status=PROCESSED) == len(submissions)

    await eventually(all_processed, timeout=15, pause=0.1)
    for submission in submissions:
        stored = await acme.raw(submission.id)
        # The one the dead replica held: its attempt and the survivor's; the others: one.
        assert stored["attempts"] == (2 if submission.id == held["_id"] else 1)
        assert "lease_owner" not in stored
        assert [t["currency"] for t in stored["totals"]] == ["EUR"]

    async def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = await scrape(survivor)
        return samples if outcome(samples, "processed") == len(submissions) else None

    samples = await eventually(counted, timeout=5, pause=0.1)
    assert samples[(SUBMISSION_LEASE_EXPIRIES, ())] == 1
    assert outcome(samples, "lost") == 0
    assert sorted(processed_ids(survivor)) == sorted(str(s.id) for s in submissions)

"""Every submissions query, on one tenant's bound classes (`SubmissionModels`).

Documents go in and out through Beanie (validation, Decimal128, the UUID ids); the queue's
atomic state changes and the stats aggregation use the bound class's own collection.
Every queue write is fenced: it matches only the state it expects (and the lease owner), so
a worker that lost its lease can never overwrite what another worker did.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson import Decimal128
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.core.pagination import PagePosition
from service.documents.client import MongoDocument
from service.submissions.models import (
    IdempotencyKeyFields,
    StoredTotal,
    SubmissionFields,
    SubmissionModels,
)
from service.submissions.schemas import SubmissionFilters, SubmissionStatus

# What a list page carries: everything but the line items.
SUMMARY_PROJECTION = {"items": 0}
DAY_FORMAT = "%Y-%m-%d"


class KeyTaken(Exception):
    """The idempotency key exists already (another request made it first)."""


@dataclass(frozen=True)
class ExpiredLeases:
    requeued: int
    failed: int

    @property
    def total(self) -> int:
        return self.requeued + self.failed


def _owned(query: dict[str, Any], owner: uuid.UUID | None) -> dict[str, Any]:
    return query if owner is None else {**query, "created_by": owner}


def _filtered(filters: SubmissionFilters) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if filters.status is not None:
        query["status"] = filters.status.value
    created: dict[str, datetime] = {}
    if filters.created_from is not None:
        created["$gte"] = filters.created_from
    if filters.created_to is not None:
        created["$lt"] = filters.created_to
    if created:
        query["created_at"] = created
    if filters.declarant is not None:
        query["$or"] = [
            {"declarant.eori": filters.declarant},
            {"declarant.name": filters.declarant},
        ]
    return query


def _after(query: dict[str, Any], after: PagePosition | None) -> dict[str, Any]:
    if after is None:
        return query
    keyset = {"$or": [
        {"created_at": {"$gt": after.created_at}},
        {"created_at": after.created_at, "_id": {"$gt": after.id}},
    ]}  # fmt: skip
    return {"$and": [query, keyset]} if query else keyset


class SubmissionRepository:
    def __init__(self, models: SubmissionModels) -> None:
        self.models = models

    @property
    def _submissions(self) -> AsyncCollection[MongoDocument]:
        return self.models.submission.get_pymongo_collection()

    @property
    def _keys(self) -> AsyncCollection[MongoDocument]:
        return self.models.idempotency_key.get_pymongo_collection()

    # -- submissions -------------------------------------------------------------------

    async def insert(self, submission: SubmissionFields) -> None:
        """Insert; DuplicateKeyError when a submission with this id exists already."""
        await self.models.submission.model_validate(submission.model_dump()).insert()

    async def find(
        self, submission_id: uuid.UUID, owner: uuid.UUID | None
    ) -> SubmissionFields | None:
        """The submission, if it exists and `owner` (None: anyone) made it."""
        found = await self._submissions.find_one(_owned({"_id": submission_id}, owner))
        return None if found is None else self._parse(found)

    async def delete_in(
        self, submission_id: uuid.UUID, statuses: tuple[SubmissionStatus, ...]
    ) -> bool:
        """Delete it if it is (still) in one of `statuses`; whether it was."""
        result = await self._submissions.delete_one(
            {"_id": submission_id, "status": {"$in": [status.value for status in statuses]}}
        )
        return result.deleted_count == 1

    async def list_page(
        self,
        filters: SubmissionFilters,
        owner: uuid.UUID | None,
        after: PagePosition | None,
        limit: int,
    ) -> list[SubmissionFields]:
        """Up to `limit` submissions in (created_at, _id) order after `after`, no items."""
        query = _after(_owned(_filtered(filters), owner), after)
        cursor = (
            self._submissions.find(query, SUMMARY_PROJECTION)
            .sort([("created_at", ASCENDING), ("_id", ASCENDING)])
            .limit(limit)
        )
        return [self._parse({**found, "items": []}) async for found in cursor]

    def _parse(self, found: MongoDocument) -> SubmissionFields:
        return SubmissionFields.model_validate(
            self.models.submission.model_validate(found).model_dump()
        )

    # -- idempotency keys --------------------------------------------------------------

    async def insert_key(self, key: IdempotencyKeyFields) -> None:
        """Store the key; KeyTaken when it exists (unexpired or not yet removed)."""
        try:
            await self.models.idempotency_key.model_validate(key.model_dump()).insert()
        except DuplicateKeyError:
            raise KeyTaken from None

    async def find_key(self, key_id: str) -> IdempotencyKeyFields | None:
        found = await self._keys.find_one({"_id": key_id})
        if found is None:
            return None
        return IdempotencyKeyFields.model_validate(
            self.models.idempotency_key.model_validate(found).model_dump()
        )

    async def delete_key_if_expired(self, key_id: str, now: datetime) -> None:
        """Remove a key past its expiry that the TTL monitor has not removed yet."""
        await self._keys.delete_one({"_id": key_id, "expire_at": {"$lte": now}})

    async def delete_key(self, key_id: str) -> None:
        await self._keys.delete_one({"_id": key_id})

    # -- stats -------------------------------------------------------------------------

    async def stats(self, owner: uuid.UUID | None, since: datetime) -> MongoDocument:
        """One aggregation: `$match` on the indexed window first, then one `$facet`."""
        pipeline = stats_pipeline(owner, since)
        cursor = await self._submissions.aggregate(pipeline)
        results = await cursor.to_list(1)
        return results[0] if results else {"by_status": [], "per_day": [], "totals": []}

    async def explain_stats(self, owner: uuid.UUID | None, since: datetime) -> MongoDocument:
        """The server's plan for `stats` (tests check it uses an index)."""
        return await self.models.database.command(
            "explain",
            {"aggregate": self._submissions.name, "pipeline": stats_pipeline(owner, since),
             "cursor": {}},
            verbosity="queryPlanner",
            codec_options=self.models.database.codec_options,
        )  # fmt: skip

    # -- the queue ---------------------------------------------------------------------

    async def claim(self, worker: str, now: datetime, lease: timedelta) -> SubmissionFields | None:
        """Atomically take the oldest due PENDING submission: PROCESSING under our lease."""
        claimed = await self._submissions.find_one_and_update(
            {"status": SubmissionStatus.PENDING.value, "not_before": {"$lte": now}},
            {
                "$set": {
                    "status": SubmissionStatus.PROCESSING.value,
                    "lease_owner": worker,
                    "lease_expires_at": now + lease,
                    "updated_at": now,
                },
                "$inc": {"attempts": 1},
            },
            sort=[("status", ASCENDING), ("not_before", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        return None if claimed is None else self._parse(claimed)

    async def requeue_expired(self, now: datetime, max_attempts: int) -> ExpiredLeases:
        """Expired leases back to the queue; those out of attempts FAILED instead."""
        expired = {"status": SubmissionStatus.PROCESSING.value, "lease_expires_at": {"$lt": now}}
        unlease = {"lease_owner": "", "lease_expires_at": ""}
        failed = await self._submissions.update_many(
            {**expired, "attempts": {"$gte": max_attempts}},
            {"$set": {"status": SubmissionStatus.FAILED.value, "updated_at": now,
                      "failure_reason": "the lease expired on the last attempt; giving up"},
             "$unset": unlease},
        )  # fmt: skip
        requeued = await self._submissions.update_many(
            expired,
            {"$set": {"status": SubmissionStatus.PENDING.value, "not_before": now,
                      "updated_at": now},
             "$unset": unlease},
        )  # fmt: skip
        return ExpiredLeases(requeued=requeued.modified_count, failed=failed.modified_count)

    async def complete(
        self, submission_id: uuid.UUID, worker: str, totals: list[StoredTotal], now: datetime
    ) -> bool:
        """PROCESSED with its totals, if we still hold the lease; whether we did."""
        return await self._settle(
            submission_id,
            worker,
            {"status": SubmissionStatus.PROCESSED.value, "processed_at": now, "updated_at": now,
             "totals": [self._encoded_total(total) for total in totals],
             "failure_reason": None},
        )  # fmt: skip

    async def retry_later(
        self, submission_id: uuid.UUID, worker: str, not_before: datetime, reason: str,
        now: datetime,
    ) -> bool:  # fmt: skip
        """PENDING again, claimable from `not_before` (the backoff), with the last reason."""
        return await self._settle(
            submission_id,
            worker,
            {"status": SubmissionStatus.PENDING.value, "not_before": not_before,
             "updated_at": now, "failure_reason": reason},
        )  # fmt: skip

    async def fail(self, submission_id: uuid.UUID, worker: str, reason: str, now: datetime) -> bool:
        return await self._settle(
            submission_id,
            worker,
            {"status": SubmissionStatus.FAILED.value, "updated_at": now, "failure_reason": reason},
        )

    async def release(self, worker: str, now: datetime) -> int:
        """Give back everything `worker` holds (a shutdown): PENDING again, the attempt not
        counted."""
        result = await self._submissions.update_many(
            {"status": SubmissionStatus.PROCESSING.value, "lease_owner": worker},
            {"$set": {"status": SubmissionStatus.PENDING.value, "not_before": now,
                      "updated_at": now},
             "$unset": {"lease_owner": "", "lease_expires_at": ""},
             "$inc": {"attempts": -1}},
        )  # fmt: skip
        return result.modified_count

    async def count_pending(self) -> int:
        return await self._submissions.count_documents({"status": SubmissionStatus.PENDING.value})

    async def _settle(self, submission_id: uuid.UUID, worker: str, fields: MongoDocument) -> bool:
        result = await self._submissions.update_one(
            {"_id": submission_id, "status": SubmissionStatus.PROCESSING.value,
             "lease_owner": worker},
            {"$set": fields, "$unset": {"lease_owner": "", "lease_expires_at": ""}},
        )  # fmt: skip
        return result.modified_count == 1

    def _encoded_total(self, total: StoredTotal) -> MongoDocument:
        return {"currency": total.currency, "value": Decimal128(total.value),
                "duty": Decimal128(total.duty)}  # fmt: skip


def stats_pipeline(owner: uuid.UUID | None, since: datetime) -> list[MongoDocument]:
    """`$match` on (created_by,) created_at first (indexed), then counts and totals from the
    per-submission currency values."""
    return [
        {"$match": _owned({"created_at": {"$gte": since}}, owner)},
        # Only what the facets read travels on: no line items.
        {"$project": {"status": 1, "created_at": 1, "currency_values": 1}},
        {"$facet": {
            "by_status": [{"$group": {"_id": "$status", "count": {"$sum": 1}}},
                          {"$sort": {"_id": 1}}],
            "per_day": [{"$group": {"_id": {"$dateToString": {"format": DAY_FORMAT,
                                                              "date": "$created_at"}},
                                    "count": {"$sum": 1}}},
                        {"$sort": {"_id": 1}}],
            "totals": [{"$unwind": "$currency_values"},
                       {"$group": {"_id": "$currency_values.currency",
                                   "value": {"$sum": "$currency_values.value"},
                                   "items": {"$sum": "$currency_values.items"}}},
                       {"$sort": {"_id": 1}}],
        }},
    ]  # fmt: skip

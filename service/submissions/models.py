"""The submission documents and their indexes, bound per tenant (Beanie 2).

Beanie binds a document class to one database at `init_beanie`. The fields and indexes are
declared once here on plain models; `bind_models` makes a fresh `Document` subclass of each
for one tenant's database and initialises it there (creating the indexes), so every tenant
has classes of its own and no class is ever re-bound while a request uses it
(`service/tenants/documents.py` keeps them per tenant).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from beanie import DecimalAnnotation, Document, init_beanie
from pydantic import BaseModel, Field
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

from service.documents.client import MongoDocument
from service.submissions.schemas import Declarant, SubmissionStatus
from service.tenants.documents import ModelBinder

SUBMISSIONS_COLLECTION = "submissions"
IDEMPOTENCY_COLLECTION = "submission_idempotency_keys"


class StoredLineItem(BaseModel):
    description: str
    quantity: DecimalAnnotation
    unit_value: DecimalAnnotation
    currency: str
    origin_country: str
    hs_code: str | None = None
    # quantity x unit_value, stored so the stats aggregation sums values without arithmetic.
    line_value: DecimalAnnotation


class CurrencyValue(BaseModel):
    """What one submission declares in one currency, summed when it is accepted: the stats
    aggregation adds these (a few per submission) instead of unwinding every line item."""

    currency: str
    value: DecimalAnnotation
    items: int


class StoredTotal(BaseModel):
    currency: str
    value: DecimalAnnotation
    duty: DecimalAnnotation


class SubmissionFields(BaseModel):
    """A submission as stored; `id` is a UUID (keyset pages on (created_at, _id))."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    status: SubmissionStatus = SubmissionStatus.PENDING
    created_by: uuid.UUID
    created_at: datetime
    updated_at: datetime
    reference: str | None = None
    declarant: Declarant
    items: list[StoredLineItem]
    item_count: int
    currency_values: list[CurrencyValue]
    content_type: str
    # The queue: claimable once PENDING and `not_before` has passed (retries back off).
    not_before: datetime
    attempts: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    idempotency_key_id: str | None = None
    processed_at: datetime | None = None
    failure_reason: str | None = None
    totals: list[StoredTotal] | None = None

    class Settings:
        name = SUBMISSIONS_COLLECTION
        indexes: ClassVar[list[IndexModel]] = [
            # The queue (claims) and the stats' $match on status within a window.
            IndexModel([("status", ASCENDING), ("not_before", ASCENDING)], name="queue"),
            IndexModel([("status", ASCENDING), ("created_at", ASCENDING)], name="status_created"),
            # Keyset pages and the stats' time window.
            IndexModel([("created_at", ASCENDING), ("_id", ASCENDING)], name="created_id"),
            # Members list their own.
            IndexModel(
                [("created_by", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)],
                name="owner_created_id",
            ),
            # Expired leases are found without a scan (only claimed ones have the field).
            IndexModel([("lease_expires_at", ASCENDING)], name="lease", sparse=True),
        ]


class IdempotencyKeyFields(BaseModel):
    """One `Idempotency-Key` of one user: the body it came with and the submission it made.

    `_id` is "<user id>:<key>", so the key is unique per user; the document expires at
    `expire_at` (a TTL index), and reads ignore one past it before the server removes it.
    """

    id: str
    body_hash: str
    submission_id: uuid.UUID
    created_at: datetime
    expire_at: datetime

    class Settings:
        name = IDEMPOTENCY_COLLECTION
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("expire_at", ASCENDING)], name="expiry", expireAfterSeconds=0),
        ]


@dataclass(frozen=True)
class SubmissionModels:
    """One tenant's document classes, bound to its database."""

    submission: type[Document]
    idempotency_key: type[Document]
    database: AsyncDatabase[MongoDocument]


async def bind_models(database: AsyncDatabase[MongoDocument]) -> SubmissionModels:
    """Fresh classes for `database`, initialised there (indexes created if missing)."""

    class TenantSubmission(SubmissionFields, Document):
        class Settings(SubmissionFields.Settings):
            pass

    class TenantIdempotencyKey(IdempotencyKeyFields, Document):
        class Settings(IdempotencyKeyFields.Settings):
            pass

    await init_beanie(database=database, document_models=[TenantSubmission, TenantIdempotencyKey])
    return SubmissionModels(TenantSubmission, TenantIdempotencyKey, database)


SUBMISSION_MODELS: ModelBinder[SubmissionModels] = ModelBinder("submissions", bind_models)

"""Submission rules: who sees what, idempotency, deletion, stats. No FastAPI here.

Built once per app; every call is handed the request's `SubmissionScope` (the tenant and a
repository on its own database's bound classes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from pymongo.errors import DuplicateKeyError

from service.core.clock import utc_now
from service.core.errors import Conflict, NotFound
from service.core.pagination import CursorSigner, keyset_page
from service.identity.principal import Principal
from service.submissions.metrics import ContentKind, SubmissionMetrics
from service.submissions.models import IdempotencyKeyFields, StoredLineItem, SubmissionFields
from service.submissions.processing import currency_values_of, line_value
from service.submissions.repository import KeyTaken, SubmissionRepository
from service.submissions.schemas import (
    CurrencyTotal,
    DayCount,
    DeclarationIn,
    StatusCount,
    SubmissionFilters,
    SubmissionOut,
    SubmissionPage,
    SubmissionStats,
    SubmissionStatus,
    SubmissionSummary,
)
from service.tenants.schemas import TenantEntry

SUBMISSION_NOT_FOUND = "Submission not found"
DELETABLE = (SubmissionStatus.PENDING, SubmissionStatus.FAILED)
# A request that lost the race for a key waits this long for the winner's submission.
KEY_RACE_ATTEMPTS = 5
KEY_RACE_PAUSE_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class SubmissionScope:
    """The request's tenant and a repository on that tenant's own database."""

    tenant: TenantEntry
    repository: SubmissionRepository


@dataclass(frozen=True, slots=True)
class Accepted:
    """The outcome of a POST: the submission, and whether this request created it."""

    submission: SubmissionFields
    is_new: bool


def mongo_time(moment: datetime) -> datetime:
    """`moment` at the millisecond, as MongoDB stores it (cursors must match what is read)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def owner_filter(principal: Principal) -> uuid.UUID | None:
    """Members see their own submissions; owners and admins the whole tenant's."""
    return None if principal.sees_all_of_tenant else principal.user_id


def body_hash(declaration: DeclarationIn) -> str:
    """The declaration's identity for idempotency: its canonical form, whatever the format."""
    return hashlib.sha256(declaration.model_dump_json().encode()).hexdigest()


def summary_of(submission: SubmissionFields) -> SubmissionSummary:
    return SubmissionSummary.model_validate(submission.model_dump())


def out_of(submission: SubmissionFields) -> SubmissionOut:
    return SubmissionOut.model_validate(submission.model_dump())


class SubmissionService:
    def __init__(
        self,
        cursors: CursorSigner,
        metrics: SubmissionMetrics,
        *,
        idempotency_ttl_seconds: int,
        stats_window_days: int,
        on_new_work: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.cursors = cursors
        self.metrics = metrics
        self.idempotency_ttl = timedelta(seconds=idempotency_ttl_seconds)
        self.stats_window_days = stats_window_days
        self.on_new_work = on_new_work
        self._clock = clock

    def _now(self) -> datetime:
        return mongo_time(self._clock())

    async def submit(
        self,
        scope: SubmissionScope,
        principal: Principal,
        declaration: DeclarationIn,
        kind: ContentKind,
        idempotency_key: str | None,
    ) -> Accepted:
        """Store the declaration PENDING; with a key, the same key and body again return the
        first submission and another body is a 409."""
        submission = self._new_submission(principal, declaration, kind)
        if idempotency_key is None:
            await scope.repository.insert(submission)
            return self._accepted(submission, kind)
        key = IdempotencyKeyFields(
            id=f"{principal.user_id}:{idempotency_key}",
            body_hash=body_hash(declaration),
            submission_id=submission.id,
            created_at=submission.created_at,
            expire_at=submission.created_at + self.idempotency_ttl,
        )
        submission.idempotency_key_id = key.id
        return await self._submit_once(scope.repository, submission, key, kind)

    async def _submit_once(
        self,
        repository: SubmissionRepository,
        submission: SubmissionFields,
        key: IdempotencyKeyFields,
        kind: ContentKind,
    ) -> Accepted:
        for _ in range(KEY_RACE_ATTEMPTS):
            try:
                await repository.insert_key(key)
            except KeyTaken:
                replayed = await self._replay(repository, submission, key)
                if replayed is not None:
                    return replayed
                await asyncio.sleep(KEY_RACE_PAUSE_SECONDS)
                continue
            # A request that lost the race may have stored it for us from the key: the same.
            with contextlib.suppress(DuplicateKeyError):
                await repository.insert(submission)
            return self._accepted(submission, kind)
        raise Conflict("The Idempotency-Key is in use by a request still in progress; retry")

    async def _replay(
        self, repository: SubmissionRepository, submission: SubmissionFields,
        key: IdempotencyKeyFields,
    ) -> Accepted | None:  # fmt: skip
        """The first request's submission for a taken key; None to try the key again (it
        expired, or vanished between our insert and this read)."""
        stored = await repository.find_key(key.id)
        if stored is None:
            return None
        if stored.expire_at <= self._now():
            await repository.delete_key_if_expired(key.id, self._now())
            return None
        if stored.body_hash != key.body_hash:
            raise Conflict("This Idempotency-Key was used with a different body")
        first = await repository.find(stored.submission_id, submission.created_by)
        if first is not None:
            return Accepted(first, is_new=False)
        # The key's first request stored the key but not (yet) the submission, or crashed
        # in between: the key says exactly what to store, under the first request's id.
        recreated = submission.model_copy(update={"id": stored.submission_id})
        with contextlib.suppress(DuplicateKeyError):  # the first request got there meanwhile
            await repository.insert(recreated)
        found = await repository.find(stored.submission_id, submission.created_by)
        return None if found is None else Accepted(found, is_new=False)

    def _new_submission(
        self, principal: Principal, declaration: DeclarationIn, kind: ContentKind
    ) -> SubmissionFields:
        now = self._now()
        items = [
            StoredLineItem(
                **item.model_dump(), line_value=line_value(item.quantity, item.unit_value)
            )
            for item in declaration.items
        ]
        return SubmissionFields(
            created_by=principal.user_id,
            created_at=now,
            updated_at=now,
            reference=declaration.reference,
            declarant=declaration.declarant,
            items=items,
            item_count=len(items),
            currency_values=currency_values_of(items),
            content_type=kind.value,
            not_before=now,
        )

    def _accepted(self, submission: SubmissionFields, kind: ContentKind) -> Accepted:
        self.metrics.received(kind)
        self.on_new_work()
        return Accepted(submission, is_new=True)

    async def get(
        self, scope: SubmissionScope, principal: Principal, submission_id: uuid.UUID
    ) -> SubmissionOut:
        return out_of(await self._visible(scope, principal, submission_id))

    async def _visible(
        self, scope: SubmissionScope, principal: Principal, submission_id: uuid.UUID
    ) -> SubmissionFields:
        """The submission if the principal may see it; another's (a member's view) or another
        tenant's is the same 404 as none."""
        found = await scope.repository.find(submission_id, owner_filter(principal))
        if found is None:
            raise NotFound(SUBMISSION_NOT_FOUND)
        return found

    async def list_page(
        self,
        scope: SubmissionScope,
        principal: Principal,
        filters: SubmissionFilters,
        cursor: str | None,
        limit: int,
    ) -> SubmissionPage:
        owner = owner_filter(principal)
        return await keyset_page(
            partial(scope.repository.list_page, filters, owner),
            summary_of,
            signer=self.cursors,
            # A cursor continues only this tenant's listing, for this viewer and filters.
            scope=f"{scope.tenant.slug}|{owner}|{filters.model_dump_json()}",
            cursor=cursor,
            limit=limit,
        )

    async def delete(
        self, scope: SubmissionScope, principal: Principal, submission_id: uuid.UUID
    ) -> None:
        """Only PENDING or FAILED ones (409 otherwise); its idempotency key goes with it."""
        found = await self._visible(scope, principal, submission_id)
        if not await scope.repository.delete_in(submission_id, DELETABLE):
            raise Conflict(
                f"Only {' or '.join(DELETABLE)} submissions can be deleted; this one is "
                f"{found.status if found.status not in DELETABLE else 'being processed'}"
            )
        if found.idempotency_key_id is not None:
            await scope.repository.delete_key(found.idempotency_key_id)

    async def stats(
        self, scope: SubmissionScope, principal: Principal, days: int
    ) -> SubmissionStats:
        """Counts by status, per day and totals per currency over the last `days` days."""
        window = min(days, self.stats_window_days)
        now = self._now()
        since = (now - timedelta(days=window - 1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        facets = await scope.repository.stats(owner_filter(principal), since)
        return SubmissionStats(
            window_days=window,
            since=since,
            by_status=[StatusCount(status=row["_id"], count=row["count"])
                       for row in facets["by_status"]],
            per_day=[DayCount(day=row["_id"], count=row["count"]) for row in facets["per_day"]],
            totals=[CurrencyTotal(currency=row["_id"], value=row["value"].to_decimal(),
                                  items=row["items"]) for row in facets["totals"]],
        )  # fmt: skip

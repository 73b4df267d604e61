"""A Tenant's status as the operator writes it: phase, conditions, what it provisioned.

Pure functions of the previous status and what just happened, so the rules (a condition's
lastTransitionTime moves only when its status does; a failure says which step and why) are
tested without a cluster.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from berth_operator.resource import (
    Condition,
    ConditionStatus,
    ConditionType,
    MongoStatus,
    Phase,
    ServerRef,
    TenantStatus,
)


class Step(StrEnum):
    """Reconciliation, in order; each step is reported by one condition."""

    SERVER = "server"
    DATABASE = "database"
    MIGRATIONS = "migrations"
    MONGO = "mongo"
    CREDENTIALS = "credentials"
    REGISTRY = "registry"


CONDITION_OF = {
    Step.SERVER: ConditionType.DATABASE_READY,
    Step.DATABASE: ConditionType.DATABASE_READY,
    Step.MIGRATIONS: ConditionType.MIGRATED,
    Step.MONGO: ConditionType.MONGO_READY,
    Step.CREDENTIALS: ConditionType.CREDENTIALS_READY,
    Step.REGISTRY: ConditionType.READY,
}
# The order conditions are listed in (kubectl describe shows them so).
CONDITION_ORDER = (
    ConditionType.DATABASE_READY,
    ConditionType.MIGRATED,
    ConditionType.MONGO_READY,
    ConditionType.CREDENTIALS_READY,
    ConditionType.READY,
)
# Conditions a Tenant has only when it asks for what they report.
_OPTIONAL = frozenset({ConditionType.MONGO_READY})


def _not_asked(*, mongo: bool) -> frozenset[ConditionType]:
    return frozenset() if mongo else _OPTIONAL


@dataclass(frozen=True)
class Failure:
    """Why a reconcile stopped, fit for status and events (never a secret)."""

    step: Step
    reason: str
    message: str
    temporary: bool
    retry_seconds: float | None = None

    @property
    def text(self) -> str:
        if self.retry_seconds is None:
            return self.message
        return f"{self.message} (retrying in {self.retry_seconds:g}s)"


@dataclass(frozen=True)
class Provisioned:
    """What a successful reconcile established."""

    database: str
    schema_version: str | None
    credentials_secret: str
    server: ServerRef
    rotation: str | None
    suspended: bool
    mongo: MongoStatus | None = None


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge(
    previous: list[Condition],
    updates: Mapping[ConditionType, tuple[ConditionStatus, str, str]],
    *,
    generation: int,
    now: str,
    drop: Collection[ConditionType] = (),
) -> list[Condition]:
    by_type = {condition.type: condition for condition in previous if condition.type not in drop}
    for kind, (status, reason, message) in updates.items():
        old = by_type.get(kind)
        moved = old is None or old.status is not status
        by_type[kind] = Condition(
            type=kind,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=now if moved or old is None else old.last_transition_time,
            observed_generation=generation,
        )
    return [by_type[kind] for kind in CONDITION_ORDER if kind in by_type]


def provisioning(
    previous: TenantStatus, server: ServerRef, *, generation: int, mongo: bool = False
) -> TenantStatus:
    """The first status of a new Tenant: where it will live, nothing known yet."""
    unknown = (ConditionStatus.UNKNOWN, "Provisioning", "")
    asked = [kind for kind in CONDITION_ORDER if kind not in _not_asked(mongo=mongo)]
    updates = dict.fromkeys(asked, unknown)
    return previous.model_copy(
        update={
            "phase": Phase.PROVISIONING,
            "server": server,
            "conditions": _merge(
                previous.conditions, updates, generation=generation, now=now_rfc3339()
            ),
        }
    )


def with_mongo(previous: TenantStatus, mongo: MongoStatus | None) -> TenantStatus:
    """Record where the tenant's MongoDB user is before creating it (so a crash or a delete
    before the end still knows what to clean up), or forget it once cleaned up."""
    return previous.model_copy(update={"mongo": mongo})


def ready(previous: TenantStatus, done: Provisioned, *, generation: int) -> TenantStatus:
    schema = done.schema_version or "base"
    served = "suspended: its requests are refused (403)" if done.suspended else "served"
    shown = "Suspended" if done.suspended else "Registered"
    updates = {
        ConditionType.DATABASE_READY: (
            ConditionStatus.TRUE, "Provisioned", f"role and database {done.database}",
        ),
        ConditionType.MIGRATED: (ConditionStatus.TRUE, "AtHead", f"schema {schema}"),
        ConditionType.CREDENTIALS_READY: (
            ConditionStatus.TRUE, "SecretWritten", f"Secret {done.credentials_secret}",
        ),
        ConditionType.READY: (
            ConditionStatus.TRUE, shown, f"tenant {served}",
        ),
    }  # fmt: skip
    if done.mongo is not None:
        updates[ConditionType.MONGO_READY] = (
            ConditionStatus.TRUE,
            "Provisioned",
            f"user {done.mongo.user} (readWrite on {done.mongo.database} only)",
        )
    conditions = _merge(
        previous.conditions,
        updates,
        generation=generation,
        now=now_rfc3339(),
        drop=_not_asked(mongo=done.mongo is not None),
    )
    return TenantStatus(
        phase=Phase.READY,
        observed_generation=generation,
        database=done.database,
        schema_version=done.schema_version,
        credentials_secret=done.credentials_secret,
        server=done.server,
        mongo=done.mongo,
        credentials_rotation=done.rotation,
        conditions=conditions,
    )


def failed(
    previous: TenantStatus, failure: Failure, *, generation: int, mongo: bool = False
) -> TenantStatus:
    """The step that failed says why; the steps before it held; Ready is False. `mongo`:
    whether the Tenant asks for MongoDB (else its step did nothing: no condition for it)."""
    steps = list(Step)
    failing = CONDITION_OF[failure.step]
    status = ConditionStatus.FALSE
    updates: dict[ConditionType, tuple[ConditionStatus, str, str]] = {}
    for step in steps[: steps.index(failure.step)]:
        kind = CONDITION_OF[step]
        if kind in _not_asked(mongo=mongo):
            continue
        held = next((c for c in previous.conditions if c.type is kind), None)
        if held is None or held.status is not ConditionStatus.TRUE:
            updates[kind] = (ConditionStatus.TRUE, "Done", "")
    updates[failing] = (status, failure.reason, failure.text)
    updates[ConditionType.READY] = (status, failure.reason, failure.text)
    was_served = previous.phase in (Phase.READY, Phase.FAILED)
    phase = Phase.PROVISIONING if failure.temporary and not was_served else Phase.FAILED
    return previous.model_copy(
        update={
            "phase": phase,
            # A permanent failure is this generation's answer; a temporary one is not yet.
            "observed_generation": previous.observed_generation
            if failure.temporary
            else generation,
            "conditions": _merge(
                previous.conditions, updates, generation=generation, now=now_rfc3339()
            ),
        }
    )


def deleting(
    previous: TenantStatus, message: str, *, generation: int, reason: str = "Deleting"
) -> TenantStatus:
    """Being deleted: what it does now, or (`reason`) why cleaning up failed."""
    updates = {ConditionType.READY: (ConditionStatus.FALSE, reason, message)}
    return previous.model_copy(
        update={
            "phase": Phase.DELETING,
            "conditions": _merge(
                previous.conditions, updates, generation=generation, now=now_rfc3339()
            ),
        }
    )


def ready_condition(status: TenantStatus) -> Condition | None:
    return next((c for c in status.conditions if c.type is ConditionType.READY), None)


def is_news(previous: TenantStatus, failure: Failure) -> bool:
    """Whether a failure is worth an Event: not when the status already says the same."""
    current = ready_condition(previous)
    if current is None or current.status is ConditionStatus.TRUE:
        return True
    return current.reason != failure.reason or not current.message.startswith(failure.message)

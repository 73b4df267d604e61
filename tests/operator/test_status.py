"""Status rendering: conditions move their lastTransitionTime only when their status moves,
a failure says which step and why, only news makes an Event, and MongoReady is there only
for a Tenant that asks for MongoDB."""

from __future__ import annotations

import dataclasses

import pytest
from berth_operator import status as statuses
from berth_operator.resource import (
    ConditionStatus,
    ConditionType,
    MongoStatus,
    Phase,
    ServerRef,
    TenantStatus,
)
from berth_operator.status import Failure, Provisioned, Step

SERVER = ServerRef(secret_namespace="prod", secret_name="pg", secret_key="url")
DONE = Provisioned(
    database="tenant_acme",
    schema_version="0001",
    credentials_secret="berth-tenant-acme",
    server=SERVER,
    rotation=None,
    suspended=False,
)
MONGO = MongoStatus(
    server=ServerRef(secret_namespace="prod", secret_name="mongo", secret_key="url"),
    database="berth_acme",
    user="berth_acme",
)
WITH_MONGO = dataclasses.replace(DONE, mongo=MONGO)
WITHOUT_MONGO = [kind for kind in statuses.CONDITION_ORDER if kind is not ConditionType.MONGO_READY]


def of(status: TenantStatus) -> dict[ConditionType, tuple[ConditionStatus, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


@pytest.mark.parametrize(
    ("mongo", "kinds"), [(False, WITHOUT_MONGO), (True, list(statuses.CONDITION_ORDER))]
)
def test_a_new_tenant_is_provisioning_with_every_condition_it_asks_for_unknown(
    mongo: bool, kinds: list[ConditionType]
) -> None:
    first = statuses.provisioning(TenantStatus(), SERVER, generation=1, mongo=mongo)

    assert first.phase is Phase.PROVISIONING
    assert first.server == SERVER
    assert {status for status, _ in of(first).values()} == {ConditionStatus.UNKNOWN}
    assert [c.type for c in first.conditions] == kinds


def test_ready_with_mongo_reports_the_user_and_without_it_drops_the_condition() -> None:
    with_mongo = statuses.ready(TenantStatus(), WITH_MONGO, generation=1)
    disabled = statuses.ready(with_mongo, DONE, generation=2)

    mongo_ready = next(c for c in with_mongo.conditions if c.type is ConditionType.MONGO_READY)
    assert (mongo_ready.status, mongo_ready.reason) == (ConditionStatus.TRUE, "Provisioned")
    assert "berth_acme" in mongo_ready.message
    assert with_mongo.mongo == MONGO
    assert [c.type for c in disabled.conditions] == WITHOUT_MONGO
    assert disabled.mongo is None


def test_ready_sets_everything_and_observes_the_generation() -> None:
    ready = statuses.ready(TenantStatus(), DONE, generation=3)

    assert (ready.phase, ready.observed_generation, ready.schema_version) == (
        Phase.READY,
        3,
        "0001",
    )
    assert {status for status, _ in of(ready).values()} == {ConditionStatus.TRUE}


def test_a_transition_time_moves_only_when_the_status_does() -> None:
    ready = statuses.ready(TenantStatus(), DONE, generation=1)
    aged = ready.model_copy(
        update={
            "conditions": [
                c.model_copy(update={"last_transition_time": "2020-01-01T00:00:00Z"})
                for c in ready.conditions
            ]
        }
    )
    failure = Failure(Step.MIGRATIONS, "MigrationFailed", "boom", temporary=False)

    again = statuses.ready(aged, DONE, generation=2)
    failed = statuses.failed(aged, failure, generation=2)

    assert {c.last_transition_time for c in again.conditions} == {"2020-01-01T00:00:00Z"}
    times = {c.type: c.last_transition_time for c in failed.conditions}
    assert times[ConditionType.DATABASE_READY] == "2020-01-01T00:00:00Z"
    assert times[ConditionType.MIGRATED] != "2020-01-01T00:00:00Z"
    assert times[ConditionType.READY] != "2020-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("step", "condition"),
    [
        (Step.SERVER, ConditionType.DATABASE_READY),
        (Step.DATABASE, ConditionType.DATABASE_READY),
        (Step.MIGRATIONS, ConditionType.MIGRATED),
        (Step.MONGO, ConditionType.MONGO_READY),
        (Step.CREDENTIALS, ConditionType.CREDENTIALS_READY),
        (Step.REGISTRY, ConditionType.READY),
    ],
)
def test_a_failure_names_its_step_and_keeps_the_steps_before_it(
    step: Step, condition: ConditionType
) -> None:
    first = statuses.provisioning(TenantStatus(), SERVER, generation=1, mongo=True)
    failure = Failure(step, "Why", "what", temporary=True)

    failed = statuses.failed(first, failure, generation=1, mongo=True)

    conditions = of(failed)
    assert conditions[condition] == (ConditionStatus.FALSE, "Why")
    assert conditions[ConditionType.READY] == (ConditionStatus.FALSE, "Why")
    before = statuses.CONDITION_OF[list(Step)[max(list(Step).index(step) - 1, 0)]]
    if before is not condition:
        assert conditions[before][0] is ConditionStatus.TRUE


def test_a_later_failure_of_a_tenant_without_mongo_invents_no_mongo_condition() -> None:
    first = statuses.provisioning(TenantStatus(), SERVER, generation=1)
    failure = Failure(Step.REGISTRY, "RegistryConflict", "busy", temporary=True)

    failed = statuses.failed(first, failure, generation=1)

    assert ConditionType.MONGO_READY not in of(failed)
    assert of(failed)[ConditionType.CREDENTIALS_READY] == (ConditionStatus.TRUE, "Done")


def test_temporary_failures_keep_provisioning_permanent_ones_fail_and_observe() -> None:
    first = statuses.provisioning(TenantStatus(), SERVER, generation=2)
    temporary = Failure(Step.DATABASE, "ServerUnreachable", "down", temporary=True, retry_seconds=8)
    permanent = Failure(Step.DATABASE, "OwnershipConflict", "not ours", temporary=False)

    retrying = statuses.failed(first, temporary, generation=2)
    refused = statuses.failed(first, permanent, generation=2)
    served_then_down = statuses.failed(
        statuses.ready(first, DONE, generation=2), temporary, generation=2
    )

    assert (retrying.phase, retrying.observed_generation) == (Phase.PROVISIONING, None)
    assert "down (retrying in 8s)" in retrying.conditions[-1].message
    assert (refused.phase, refused.observed_generation) == (Phase.FAILED, 2)
    assert served_then_down.phase is Phase.FAILED


def test_only_a_new_failure_is_news() -> None:
    first = statuses.provisioning(TenantStatus(), SERVER, generation=1)
    failure = Failure(Step.DATABASE, "ServerUnreachable", "down", temporary=True, retry_seconds=2)
    reported = statuses.failed(first, failure, generation=1)
    later = Failure(Step.DATABASE, "ServerUnreachable", "down", temporary=True, retry_seconds=4)
    other = Failure(Step.DATABASE, "OwnershipConflict", "not ours", temporary=False)

    assert statuses.is_news(first, failure)
    assert not statuses.is_news(reported, later)
    assert statuses.is_news(reported, other)


def test_deleting_says_what_it_is_doing() -> None:
    deleting = statuses.deleting(
        statuses.ready(TenantStatus(), DONE, generation=1), "removing", generation=1
    )

    assert deleting.phase is Phase.DELETING
    assert of(deleting)[ConditionType.READY] == (ConditionStatus.FALSE, "Deleting")

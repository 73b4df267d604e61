"""Failures become a reason, a message that is safe to show, and a retry decision."""

from __future__ import annotations

import asyncpg
import httpx2
import psycopg
import pymongo.errors
import pytest
from berth_operator.errors import (
    NoMongoServer,
    NoServer,
    ServerSecretMissing,
    classify,
    scrub,
)
from berth_operator.kube import CredentialsConflict
from berth_operator.registry import RegistryWriteFailed
from berth_operator.resource import InvalidTenant
from berth_operator.status import Step
from sqlalchemy.exc import ArgumentError

from service.core.logging import REDACTED
from service.tenants.mongo_users import InvalidMongoUrl, MongoUnreachable
from service.tenants.postgres import OwnershipConflict, ProvisioningError, ServerUnreachable


@pytest.mark.parametrize(
    ("error", "reason", "temporary"),
    [
        (NoServer("no server"), "NoServer", False),
        (InvalidTenant("spec is invalid"), "InvalidSpec", False),
        (ServerSecretMissing("Secret x/pg is missing"), "ServerSecretMissing", True),
        (ServerUnreachable("cannot connect"), "ServerUnreachable", True),
        (OwnershipConflict("role is not ours"), "OwnershipConflict", False),
        (ProvisioningError("not a slug"), "ProvisioningFailed", False),
        (CredentialsConflict("taken"), "SecretConflict", True),
        (RegistryWriteFailed("storm"), "RegistryConflict", True),
        (ArgumentError("bad url"), "InvalidServerUrl", False),
        (ConnectionRefusedError("refused"), "DatabaseUnavailable", True),
        (psycopg.OperationalError("gone"), "DatabaseUnavailable", True),
        (asyncpg.CannotConnectNowError("starting"), "DatabaseUnavailable", True),
        (psycopg.errors.InsufficientPrivilege("denied"), "DatabaseError", False),
        (httpx2.ConnectError("no route"), "KubernetesApiError", True),
        (NoMongoServer("no mongo server"), "NoMongoServer", False),
        (MongoUnreachable("cannot reach MongoDB"), "MongoUnavailable", True),
        (pymongo.errors.ServerSelectionTimeoutError("no primary"), "MongoUnavailable", True),
        (InvalidMongoUrl("not a MongoDB URL"), "InvalidMongoUrl", False),
        (pymongo.errors.OperationFailure("not authorized", code=13), "MongoError", False),
        (KeyError("surprise"), "InternalError", True),
    ],
)
def test_each_failure_has_a_reason_and_a_retry_decision(
    error: BaseException, reason: str, temporary: bool
) -> None:
    assert classify(Step.DATABASE, error)[::2] == (reason, temporary)


def test_an_unknown_error_shows_its_type_never_its_text() -> None:
    _, message, _ = classify(Step.MIGRATIONS, RuntimeError("password=hunter2 leaked"))

    assert message == "RuntimeError in step migrations"


def test_an_ownership_clash_points_at_the_recovery_instructions() -> None:
    _, message, _ = classify(Step.DATABASE, OwnershipConflict("role tenant_x is not ours"))

    assert "operator/README.md" in message


def test_scrub_removes_every_secret_longest_first() -> None:
    text = "connect postgresql://admin:pa55word@db/x failed; pa55 pa55word"

    scrubbed = scrub(text, ["pa55", "postgresql://admin:pa55word@db/x", ""])

    assert scrubbed == f"connect {REDACTED} failed; {REDACTED} {REDACTED}word"

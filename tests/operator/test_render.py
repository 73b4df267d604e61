"""What the operator writes, rendered without a cluster: the credentials Secret, the
registry key (the service's own format), the password recovered from an entry, and the
identifier rules against injection attempts."""

from __future__ import annotations

import uuid

import pytest
from berth_operator.registry import entry_value
from berth_operator.render import (
    CREDENTIAL_KEYS,
    MONGO_CREDENTIAL_KEYS,
    credentials_data,
    credentials_secret_name,
    registered_mongo_password,
    registered_password,
    registry_entry,
)
from berth_operator.resource import Tenant

from service.tenants.mongo_users import MongoProvisioned, mongo_names, tenant_mongo_url
from service.tenants.postgres import Owner, ProvisioningError, tenant_names
from service.tenants.registry import entry_json
from service.tenants.schemas import TenantEntry, TenantStatus

ADMIN = "postgresql://admin:s3cret@db.berth.svc:6432/postgres?sslmode=require&application_name=x"


def tenant(name: str = "acme", **spec: object) -> Tenant:
    return Tenant.from_body(
        {
            "metadata": {
                "name": name,
                "namespace": "prod",
                "uid": str(uuid.uuid4()),
                "generation": 1,
            },
            "spec": spec,
        }
    )


def test_the_credentials_secret_holds_a_libpq_url_and_its_parts() -> None:
    data = credentials_data(ADMIN, tenant_names("big-co"), "pw-123")

    assert tuple(data) == CREDENTIAL_KEYS
    assert data == {
        "url": "postgresql://tenant_big_co:pw-123@db.berth.svc:6432/tenant_big_co?sslmode=require",
        "host": "db.berth.svc",
        "port": "6432",
        "database": "tenant_big_co",
        "username": "tenant_big_co",
        "password": "pw-123",
    }
    assert credentials_secret_name("big-co") == "berth-tenant-big-co"


def test_the_registry_key_is_the_services_entry_format_with_the_password_in_clear() -> None:
    url = "postgresql+asyncpg://tenant_acme:pw@db:5432/tenant_acme"

    entry = registry_entry(tenant(suspended=True, selfSignup=True), url, "0001")

    assert entry_value(entry).encode() == entry_json(entry)
    parsed = TenantEntry.model_validate_json(entry_value(entry))
    assert (parsed.status, parsed.self_signup, parsed.schema_version) == (
        TenantStatus.SUSPENDED, True, "0001",
    )  # fmt: skip
    assert parsed.database_url.get_secret_value() == url


def test_a_password_is_recovered_only_from_an_entry_for_the_tenants_own_role() -> None:
    names = tenant_names("acme")
    ours = registry_entry(tenant(), "postgresql+asyncpg://tenant_acme:pw@db/tenant_acme", None)
    other = registry_entry(tenant(), "postgresql+asyncpg://someone:pw@db/tenant_acme", None)

    assert registered_password(entry_value(ours), names) == "pw"
    assert registered_password(entry_value(other), names) is None
    assert registered_password("not json", names) is None
    assert registered_password(None, names) is None


@pytest.mark.parametrize(
    "slug",
    [
        'a"; DROP ROLE postgres; --',
        "acme'; DROP DATABASE x; --",
        "ACME",
        "acme_",
        "a" * 41,
        "acmé",
        "acme\x00",
        "../acme",
        "acme.json",
    ],
)
def test_names_that_are_not_slugs_never_reach_sql(slug: str) -> None:
    with pytest.raises(ProvisioningError):
        tenant_names(slug)


@pytest.mark.parametrize("uid", ["", "x'; DROP ROLE postgres; --", "12345", "berth:cli"])
def test_an_owner_mark_is_made_only_from_a_real_uid(uid: str) -> None:
    with pytest.raises(ValueError):
        Owner.tenant_resource(uid)


def test_an_owner_mark_names_the_tenant_uid() -> None:
    uid = str(uuid.uuid4())

    assert Owner.tenant_resource(uid).mark == f"berth:tenant-uid={uid}"
    assert not Owner.tenant_resource(uid).adopts_unmarked


def test_a_spec_that_does_not_parse_is_kept_as_a_problem_not_an_exception() -> None:
    parsed = tenant(deletionPolicy="Sometimes", bogus=1)

    assert parsed.problem is not None
    assert "spec.deletionPolicy" in parsed.problem
    assert "spec.bogus" in parsed.problem


def test_annotations_ask_for_rotation_and_for_skipping_cleanup() -> None:
    body = {
        "metadata": {
            "name": "acme",
            "namespace": "prod",
            "uid": str(uuid.uuid4()),
            "annotations": {"berth.dev/rotate-credentials": "2", "berth.dev/skip-cleanup": "True"},
            "deletionTimestamp": "2026-12-02T00:00:00Z",
        },
        "spec": {},
    }

    parsed = Tenant.from_body(body)

    assert (parsed.rotation_request, parsed.skips_cleanup, parsed.is_deleting) == ("2", True, True)


MONGO_ADMIN = "mongodb://root:r00t@mongo-0:27017/?authSource=admin&tls=true"


def mongo_of(slug: str, password: str = "m/pw") -> MongoProvisioned:
    names = mongo_names(slug)
    url = tenant_mongo_url(MONGO_ADMIN, names, password)
    return MongoProvisioned(names=names, url=url, password=password, changes=())


def test_with_mongo_the_secret_and_the_entry_hold_its_url_and_database() -> None:
    mongo = mongo_of("big-co")
    url = "postgresql+asyncpg://tenant_big_co:pw@db:5432/tenant_big_co"

    data = credentials_data(ADMIN, tenant_names("big-co"), "pw-123", mongo)
    entry = registry_entry(tenant("big-co", mongo={"enabled": True}), url, "0001", mongo)

    assert tuple(data) == CREDENTIAL_KEYS + MONGO_CREDENTIAL_KEYS
    assert {key: data[key] for key in MONGO_CREDENTIAL_KEYS} == {
        "mongo_url": "mongodb://berth_big-co:m%2Fpw@mongo-0:27017/berth_big-co"
        "?tls=true&authSource=berth_big-co",
        "mongo_database": "berth_big-co",
        "mongo_username": "berth_big-co",
        "mongo_password": "m/pw",
    }
    assert entry.mongo_url is not None
    assert entry.mongo_url.get_secret_value() == data["mongo_url"]
    assert entry.mongo_database == "berth_big-co"
    assert "m%2Fpw" not in repr(entry) + repr(mongo)


def test_the_mongo_password_is_recovered_only_from_an_entry_for_this_user() -> None:
    url = "postgresql+asyncpg://tenant_acme:pw@db:5432/tenant_acme"
    entry = entry_value(registry_entry(tenant(), url, None, mongo_of("acme")))

    assert registered_mongo_password(entry, mongo_names("acme")) == "m/pw"
    assert registered_mongo_password(entry, mongo_names("other")) is None
    assert registered_mongo_password(entry_value(registry_entry(tenant(), url, None)),
                                     mongo_names("acme")) is None  # fmt: skip
    assert registered_mongo_password("not json", mongo_names("acme")) is None

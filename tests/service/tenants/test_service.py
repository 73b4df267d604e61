"""Which tenant a request acts on: the token's tenant, narrowed (never widened) by
X-Tenant-ID; platform admins name any; only `ready` tenants are served."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.errors import DomainError
from service.core.tenancy import TenantSuspended
from service.tenants.registry import TenantRegistry
from service.tenants.schemas import TenantStatus
from service.tenants.service import (
    TenantRequired,
    UnknownTenant,
    resolve_tenant,
)
from tests.service.conftest import RegistryOf
from tests.service.tenants.conftest import sqlite_entry


@pytest.fixture
def lookup(registry_of: RegistryOf) -> TenantRegistry:
    """A real registry directory with a tenant in each state."""
    return registry_of(
        sqlite_entry(Path("/x/acme.db"), "acme"),
        sqlite_entry(Path("/x/beta.db"), "beta"),
        sqlite_entry(Path("/x/frozen.db"), "frozen", TenantStatus.SUSPENDED),
        sqlite_entry(Path("/x/newborn.db"), "newborn", TenantStatus.PROVISIONING),
        sqlite_entry(Path("/x/leaving.db"), "leaving", TenantStatus.DELETING),
    )


SERVED = [
    pytest.param("acme", False, None, "acme", id="token-tenant"),
    pytest.param("acme", False, "acme", "acme", id="header-equal-to-token"),
    pytest.param("acme", False, "", "acme", id="empty-header-is-no-header"),
    pytest.param(None, True, "beta", "beta", id="admin-names-any-tenant"),
    pytest.param(None, True, "acme", "acme", id="admin-names-another"),
]


@pytest.mark.parametrize(("token", "admin", "header", "expected"), SERVED)
def test_the_request_acts_on_this_tenant(
    lookup: TenantRegistry, token: str | None, admin: bool, header: str | None, expected: str
) -> None:
    assert resolve_tenant(token, admin, header, lookup).slug == expected


REFUSED = [
    pytest.param("acme", False, "beta", UnknownTenant, id="header-cannot-widen-to-an-existing"),
    pytest.param("acme", False, "nobody", UnknownTenant, id="header-cannot-widen-to-unknown"),
    pytest.param("nobody", False, None, UnknownTenant, id="token-tenant-unknown-or-removed"),
    pytest.param(None, False, None, UnknownTenant, id="no-tenant-in-a-member-token"),
    pytest.param(None, False, "acme", UnknownTenant, id="member-without-tenant-names-one"),
    pytest.param(None, True, None, TenantRequired, id="admin-must-name-a-tenant"),
    pytest.param(None, True, "../etc", UnknownTenant, id="admin-names-a-non-slug"),
    pytest.param(None, True, "nobody", UnknownTenant, id="admin-names-unknown"),
    pytest.param("frozen", False, None, TenantSuspended, id="suspended-is-403"),
    pytest.param(None, True, "frozen", TenantSuspended, id="suspended-for-admins-too"),
    pytest.param("newborn", False, None, UnknownTenant, id="provisioning-is-not-served"),
    pytest.param("leaving", False, None, UnknownTenant, id="deleting-is-not-served"),
]


@pytest.mark.parametrize(("token", "admin", "header", "error"), REFUSED)
def test_the_request_is_refused(
    lookup: TenantRegistry,
    token: str | None,
    admin: bool,
    header: str | None,
    error: type[DomainError],
) -> None:
    with pytest.raises(error) as raised:
        resolve_tenant(token, admin, header, lookup)

    assert type(raised.value) is error


def test_another_tenant_and_a_missing_one_get_the_same_answer(lookup: TenantRegistry) -> None:
    """Narrowing to a tenant that exists must not be told apart from one that does not."""
    answers = []
    for header in ("beta", "does-not-exist"):
        with pytest.raises(UnknownTenant) as raised:
            resolve_tenant("acme", False, header, lookup)
        answers.append((raised.value.status_code, raised.value.message, raised.value.data))

    assert answers[0] == answers[1] == (404, "Unknown tenant", None)


def test_the_refusals_say_what_happened() -> None:
    assert (TenantSuspended.status_code, TenantSuspended.message) == (
        403,
        "This tenant is suspended",
    )
    assert TenantRequired.status_code == 400
    assert "X-Tenant-ID" in TenantRequired.message

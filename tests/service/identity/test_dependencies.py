"""CurrentPrincipal and require_role, as another feature would use them: a probe router
with guarded routes on berth's real app (real PostgreSQL, a fresh database per test)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Annotated

import pytest
from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy import update

from service.core.errors import ERROR_RESPONSES
from service.identity.dependencies import CurrentPrincipal, require_role
from service.identity.models import User
from service.identity.principal import Principal, Role
from tests.service.identity.helpers import Api, execute
from tests.support import assert_envelope

PROBE = "/api/v1/probe"
# Module level: with postponed annotations FastAPI resolves aliases from the module globals.
Owner = Annotated[Principal, Depends(require_role(Role.OWNER, Role.PLATFORM_ADMIN))]


class Seen(BaseModel):
    user_id: uuid.UUID
    email: str
    role: Role
    tenant_slug: str | None
    is_platform_admin: bool


def seen(principal: Principal) -> Seen:
    return Seen(
        user_id=principal.user_id,
        email=principal.email,
        role=principal.role,
        tenant_slug=principal.tenant_slug,
        is_platform_admin=principal.is_platform_admin,
    )


def probe_router() -> APIRouter:
    router = APIRouter(prefix=PROBE, responses=ERROR_RESPONSES)

    @router.get("/anyone", response_model=Seen)
    async def anyone(principal: CurrentPrincipal) -> Seen:
        return seen(principal)

    @router.get("/owners", response_model=Seen)
    async def owners(principal: Owner) -> Seen:
        return seen(principal)

    return router


@pytest.fixture
def probe(api: Api) -> Api:
    api.app.include_router(probe_router())
    return api


async def test_the_principal_describes_the_caller(probe: Api) -> None:
    user = await probe.user(role="admin", tenant_slug="acme")

    response = await probe.client.get(f"{PROBE}/anyone", headers=probe.headers(user))

    assert response.json() == {
        "user_id": str(user.id),
        "email": user.email,
        "role": "admin",
        "tenant_slug": "acme",
        "is_platform_admin": False,
    }


@pytest.mark.parametrize(
    ("role", "status"),
    [("member", 403), ("admin", 403), ("owner", 200), ("platform_admin", 200)],
)
async def test_require_role_lets_only_the_listed_roles_through(
    probe: Api, role: str, status: int
) -> None:
    user = await probe.user(role=role)

    response = await probe.client.get(f"{PROBE}/owners", headers=probe.headers(user))

    assert response.status_code == status
    if status == 403:
        assert_envelope(response, 403, "Forbidden", f"{PROBE}/owners")


async def test_require_role_is_chained_on_authentication(probe: Api) -> None:
    response = await probe.client.get(f"{PROBE}/owners")

    assert_envelope(response, 401, "Unauthorized", f"{PROBE}/owners")


async def test_the_row_decides_a_token_minted_as_owner_stops_when_the_row_says_member(
    probe: Api,
) -> None:
    """A demoted owner loses owner routes at once: the token's role claim no longer matches
    the row, so the token no longer speaks for the user (401), whatever it says."""
    user = await probe.user(role="owner")
    headers = probe.headers(user)

    await execute(probe.database_url, update(User).where(User.id == user.id).values(role="member"))
    response = await probe.client.get(f"{PROBE}/owners", headers=headers)

    assert_envelope(response, 401, "Unauthorized", f"{PROBE}/owners")


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"tenant_slug": "globex"}, id="another-tenant"),
        pytest.param({"tenant_slug": None}, id="no-tenant"),
        pytest.param({"role": "owner"}, id="another-role"),
    ],
)
async def test_a_token_whose_tid_or_role_differs_from_the_row_is_refused(
    probe: Api, claims: dict[str, object]
) -> None:
    """Signed by the service's own key, right user and version, but the `tid` or `role` it
    carries is not the row's: refused, so a request's tenant is the token's `tid` and the
    row's tenant at once."""
    user = await probe.user(role="member", tenant_slug="acme")
    forged = probe.headers(dataclasses.replace(user, **claims))  # type: ignore[arg-type]

    response = await probe.client.get(f"{PROBE}/anyone", headers=forged)

    body = assert_envelope(response, 401, "Unauthorized", f"{PROBE}/anyone")
    assert body["message"] == "Invalid or expired token"
    assert (
        await probe.client.get(f"{PROBE}/anyone", headers=probe.headers(user))
    ).status_code == 200


def test_require_role_needs_a_role() -> None:
    with pytest.raises(ValueError, match="at least one role"):
        require_role()


def test_principal_is_a_frozen_value() -> None:
    principal = Principal(uuid.uuid4(), "a@example.com", Role.PLATFORM_ADMIN, None, "jti")

    assert principal.is_platform_admin
    assert principal.can_see_tenant("any-tenant")
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.role = Role.MEMBER  # type: ignore[misc]
